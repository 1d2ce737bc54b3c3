//! pcapng at the level of raw blocks, sans-IO: framing (type, length, byte order), the fields
//! of interface and packet blocks, blocks of the other byte order turned into this machine's,
//! and the few blocks a query's output is made of. The query copies packet blocks whole
//! (options and all) and only renumbers their interface, which this makes cheap and exact.

use super::LinkType;

/// Section Header Block.
pub const SHB: u32 = 0x0A0D_0D0A;
/// Interface Description Block.
pub const IDB: u32 = 1;
/// Packet Block (obsolete).
pub const PB: u32 = 2;
/// Simple Packet Block.
pub const SPB: u32 = 3;
/// Interface Statistics Block.
pub const ISB: u32 = 5;
/// Enhanced Packet Block.
pub const EPB: u32 = 6;
/// The largest block accepted: anything larger is damage.
pub const MAX_BLOCK: usize = 16 << 20;

const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;

/// A section's byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Little-endian.
    Little,
    /// Big-endian.
    Big,
}

impl Endian {
    /// This machine's.
    pub const fn native() -> Endian {
        if cfg!(target_endian = "little") {
            Endian::Little
        } else {
            Endian::Big
        }
    }

    /// A u16 at `at`.
    #[inline]
    pub fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let w = *b.get(at..)?.first_chunk::<2>()?;
        Some(match self {
            Endian::Little => u16::from_le_bytes(w),
            Endian::Big => u16::from_be_bytes(w),
        })
    }

    /// A u32 at `at`.
    #[inline]
    pub fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let w = *b.get(at..)?.first_chunk::<4>()?;
        Some(match self {
            Endian::Little => u32::from_le_bytes(w),
            Endian::Big => u32::from_be_bytes(w),
        })
    }

    /// A u64 at `at`.
    #[inline]
    pub fn u64(self, b: &[u8], at: usize) -> Option<u64> {
        let w = *b.get(at..)?.first_chunk::<8>()?;
        Some(match self {
            Endian::Little => u64::from_le_bytes(w),
            Endian::Big => u64::from_be_bytes(w),
        })
    }
}

/// What starts a slice of pcapng.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// A whole block of `kind` and `len` bytes; a section header also says its byte order.
    Block {
        /// Its type.
        kind: u32,
        /// Its total length.
        len: usize,
        /// Its section's byte order (a section header's own, else the one given).
        endian: Endian,
    },
    /// A block starts here but needs `needed` bytes.
    Incomplete {
        /// Bytes needed.
        needed: usize,
    },
    /// Not a block: a length that is too small, not a multiple of four, too large, or that
    /// disagrees with the trailing copy.
    Corrupt,
}

/// Frames the block at the start of `b` in a section of byte order `endian`.
#[inline]
pub fn frame(b: &[u8], endian: Endian) -> Framed {
    if b.len() < 12 {
        return Framed::Incomplete { needed: 12 };
    }
    let mut endian = endian;
    let kind_le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if kind_le == SHB {
        endian = match u32::from_le_bytes([b[8], b[9], b[10], b[11]]) {
            BYTE_ORDER_MAGIC => Endian::Little,
            m if m.swap_bytes() == BYTE_ORDER_MAGIC => Endian::Big,
            _ => return Framed::Corrupt,
        };
    }
    let (Some(kind), Some(len)) = (endian.u32(b, 0), endian.u32(b, 4)) else {
        return Framed::Incomplete { needed: 12 };
    };
    let len = len as usize;
    if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK {
        return Framed::Corrupt;
    }
    if b.len() < len {
        return Framed::Incomplete { needed: len };
    }
    if endian.u32(b, len - 4) != Some(len as u32) {
        return Framed::Corrupt;
    }
    Framed::Block { kind, len, endian }
}

/// How an interface counts time: units per second as a power of ten or of two, and an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsUnits {
    /// `if_tsresol` as written (default 6: microseconds).
    pub resol: u8,
    /// `if_tsoffset`: seconds added.
    pub offset_s: i64,
}

impl Default for TsUnits {
    fn default() -> Self {
        TsUnits {
            resol: 6,
            offset_s: 0,
        }
    }
}

impl TsUnits {
    /// Nanoseconds since the epoch of a raw timestamp (saturating).
    #[inline]
    pub fn to_ns(self, raw: u64) -> u64 {
        let ns: u128 = if self.resol & 0x80 == 0 {
            let v = u32::from(self.resol);
            if v <= 9 {
                u128::from(raw) * 10u128.pow(9 - v)
            } else {
                u128::from(raw) / 10u128.pow((v - 9).min(38))
            }
        } else {
            let k = u32::from(self.resol & 0x7f);
            (u128::from(raw) * 1_000_000_000) >> k.min(127)
        };
        let ns = ns as i128 + i128::from(self.offset_s) * 1_000_000_000;
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// What a query needs of an interface description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its link type.
    pub link: LinkType,
    /// Its snapshot length.
    pub snaplen: u32,
    /// Its time units.
    pub ts: TsUnits,
    /// `if_name`, when given.
    pub name: Option<String>,
}

/// Reads an interface description block (`block`: the whole block).
pub fn interface(block: &[u8], endian: Endian) -> Option<Interface> {
    let link = endian.u16(block, 8)?;
    let snaplen = endian.u32(block, 12)?;
    let mut ifc = Interface {
        link: LinkType::from(u32::from(link)),
        snaplen,
        ts: TsUnits::default(),
        name: None,
    };
    for (code, value) in options(block.get(16..block.len().checked_sub(4)?)?, endian) {
        match code {
            2 => ifc.name = Some(String::from_utf8_lossy(value).into_owned()),
            9 => ifc.ts.resol = *value.first()?,
            14 => ifc.ts.offset_s = endian.u64(value, 0)? as i64,
            _ => {}
        }
    }
    Some(ifc)
}

/// The options of a block body, up to the end marker or the first that does not fit.
pub fn options(b: &[u8], endian: Endian) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    core::iter::from_fn(move || {
        let code = endian.u16(b, at)?;
        let len = usize::from(endian.u16(b, at + 2)?);
        if code == OPT_END {
            return None;
        }
        let value = b.get(at + 4..at + 4 + len)?;
        at += 4 + len.next_multiple_of(4);
        Some((code, value))
    })
}

/// A packet block's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketFields<'a> {
    /// Its interface, numbered within its section.
    pub iface: u32,
    /// Its timestamp in the interface's units (0 for a simple packet block).
    pub ts_raw: u64,
    /// Its length on the wire.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: &'a [u8],
    /// Its options (empty for a simple packet block).
    pub options: &'a [u8],
}

/// Reads an enhanced, obsolete or simple packet block; `None` when it is not one or its
/// lengths do not fit.
#[inline]
pub fn packet(kind: u32, block: &[u8], endian: Endian) -> Option<PacketFields<'_>> {
    let end = block.len().checked_sub(4)?;
    match kind {
        EPB | PB => {
            let iface = if kind == EPB {
                endian.u32(block, 8)?
            } else {
                u32::from(endian.u16(block, 8)?)
            };
            let ts_raw =
                u64::from(endian.u32(block, 12)?) << 32 | u64::from(endian.u32(block, 16)?);
            let caplen = endian.u32(block, 20)? as usize;
            let orig_len = endian.u32(block, 24)?;
            let data_end = 28usize.checked_add(caplen)?;
            let data = block.get(28..data_end).filter(|_| data_end <= end)?;
            let options = block.get(data_end.next_multiple_of(4).min(end)..end)?;
            Some(PacketFields {
                iface,
                ts_raw,
                orig_len: orig_len.max(caplen as u32),
                data,
                options,
            })
        }
        SPB => {
            let orig_len = endian.u32(block, 8)?;
            let data = block.get(12..end)?;
            let data = &data[..data.len().min(orig_len as usize)];
            Some(PacketFields {
                iface: 0,
                ts_raw: 0,
                orig_len: orig_len.max(data.len() as u32),
                data,
                options: &[],
            })
        }
        _ => None,
    }
}

/// The comments among a packet block's options.
pub fn comments<'a>(options: &'a [u8], endian: Endian) -> impl Iterator<Item = &'a str> + 'a {
    self::options(options, endian)
        .filter(|(code, _)| *code == OPT_COMMENT)
        .filter_map(|(_, v)| core::str::from_utf8(v).ok())
}

/// How an option's value is laid out, for turning it into the other byte order.
#[derive(Clone, Copy)]
enum Value {
    Bytes,
    U32,
    U64,
    /// A custom option: a private enterprise number, then bytes.
    Custom,
}

fn value_layout(kind: u32, code: u16) -> Value {
    match (kind, code) {
        (_, 2988 | 2989 | 19372 | 19373) => Value::Custom,
        (EPB | PB, 2 | 6) => Value::U32,
        (EPB, 4 | 5) => Value::U64,
        (PB, 4) => Value::U64,
        (IDB, 8 | 14 | 16 | 17) => Value::U64,
        (ISB, 2 | 3) => Value::U64,
        (ISB, 4..=8) => Value::U64,
        _ => Value::Bytes,
    }
}

/// Appends `block` (of `kind`, in byte order `from`) to `out` in this machine's byte order.
/// Only interface and packet blocks are needed; their fixed fields and their options' codes,
/// lengths and numeric values are turned. `None` (nothing appended) when it does not parse.
pub fn to_native(kind: u32, block: &[u8], from: Endian, out: &mut Vec<u8>) -> Option<()> {
    if from == Endian::native() {
        out.extend_from_slice(block);
        return Some(());
    }
    let start = out.len();
    let put16 = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_ne_bytes());
    let put32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_ne_bytes());
    let end = block.len().checked_sub(4)?;
    put32(out, kind);
    put32(out, block.len() as u32);
    let opts_at = match kind {
        IDB => {
            put16(out, from.u16(block, 8)?);
            put16(out, from.u16(block, 10)?);
            put32(out, from.u32(block, 12)?);
            16
        }
        EPB | PB => {
            if kind == EPB {
                put32(out, from.u32(block, 8)?);
            } else {
                put16(out, from.u16(block, 8)?);
                put16(out, from.u16(block, 10)?);
            }
            for at in [12, 16, 20, 24] {
                put32(out, from.u32(block, at)?);
            }
            let caplen = from.u32(block, 20)? as usize;
            let data_end = 28usize.checked_add(caplen)?.next_multiple_of(4);
            out.extend_from_slice(block.get(28..data_end.min(end))?);
            data_end.min(end)
        }
        SPB => {
            put32(out, from.u32(block, 8)?);
            out.extend_from_slice(block.get(12..end)?);
            end
        }
        _ => {
            out.truncate(start);
            return None;
        }
    };
    let mut at = opts_at;
    while at + 4 <= end {
        let code = from.u16(block, at)?;
        let len = usize::from(from.u16(block, at + 2)?);
        put16(out, code);
        put16(out, len as u16);
        if code == OPT_END {
            at += 4;
            break;
        }
        let padded = len.next_multiple_of(4);
        let value = block
            .get(at + 4..at + 4 + padded)
            .filter(|_| at + 4 + padded <= end)?;
        match value_layout(kind, code) {
            Value::U32 if len == 4 => put32(out, from.u32(value, 0)?),
            Value::U64 if len == 8 => out.extend_from_slice(&from.u64(value, 0)?.to_ne_bytes()),
            Value::Custom if len >= 4 => {
                put32(out, from.u32(value, 0)?);
                out.extend_from_slice(&value[4..]);
            }
            _ => out.extend_from_slice(value),
        }
        at += 4 + padded;
    }
    // Anything after the end marker, kept as it is.
    out.extend_from_slice(block.get(at..end).unwrap_or(&[]));
    put32(out, block.len() as u32);
    if out.len() - start != block.len() {
        out.truncate(start);
        return None;
    }
    Some(())
}

/// Writes the interface id of a native packet block at `at` in `out` (an enhanced packet
/// block's 32-bit field).
#[inline]
pub fn set_interface(out: &mut [u8], at: usize, iface: u32) {
    out[at + 8..at + 12].copy_from_slice(&iface.to_ne_bytes());
}

/// Appends one option in native order, padded.
fn put_option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_ne_bytes());
    out.extend_from_slice(&(value.len() as u16).to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + value.len().next_multiple_of(4) - value.len(), 0);
}

/// Appends a block of `kind` whose body `body` writes, with both lengths, in native order.
fn put_block(out: &mut Vec<u8>, kind: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - start + 4) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&len.to_ne_bytes());
}

/// Comments longer than an option can hold are cut (at a character boundary).
fn option_text(s: &str) -> &str {
    let mut cut = s.len().min(usize::from(u16::MAX) - 3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Appends a section header (native order, section length unknown) with `shb_userappl` and a
/// comment per line of `comments`.
pub fn put_section_header(out: &mut Vec<u8>, app: &str, comments: &[String]) {
    put_block(out, SHB, |b| {
        b.extend_from_slice(&BYTE_ORDER_MAGIC.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&(-1i64).to_ne_bytes());
        for c in comments {
            put_option(b, OPT_COMMENT, option_text(c).as_bytes());
        }
        put_option(b, 4, option_text(app).as_bytes());
        put_option(b, OPT_END, &[]);
    });
}

/// Appends an interface description with nanosecond timestamps.
pub fn put_interface(out: &mut Vec<u8>, link: LinkType, snaplen: u32, name: &str) {
    put_block(out, IDB, |b| {
        b.extend_from_slice(&(u32::from(link) as u16).to_ne_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&snaplen.to_ne_bytes());
        if !name.is_empty() {
            put_option(b, 2, option_text(name).as_bytes());
        }
        put_option(b, 9, &[9]);
        put_option(b, OPT_END, &[]);
    });
}

/// Appends an enhanced packet block (`ts_raw` in the interface's units) with optional comments.
pub fn put_packet(
    out: &mut Vec<u8>,
    iface: u32,
    ts_raw: u64,
    orig_len: u32,
    data: &[u8],
    comments: &[&str],
) {
    put_block(out, EPB, |b| {
        b.extend_from_slice(&iface.to_ne_bytes());
        b.extend_from_slice(&((ts_raw >> 32) as u32).to_ne_bytes());
        b.extend_from_slice(&(ts_raw as u32).to_ne_bytes());
        b.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        b.extend_from_slice(&orig_len.max(data.len() as u32).to_ne_bytes());
        b.extend_from_slice(data);
        b.resize(b.len() + data.len().next_multiple_of(4) - data.len(), 0);
        if !comments.is_empty() {
            for c in comments {
                put_option(b, OPT_COMMENT, option_text(c).as_bytes());
            }
            put_option(b, OPT_END, &[]);
        }
    });
}

/// Appends `comment` to the native enhanced packet block at `at` in `out` (the last block of
/// `out`): its options are rewritten with the comment added before the end marker.
pub fn add_comment(out: &mut Vec<u8>, at: usize, comment: &str) {
    let e = Endian::native();
    let Some(p) = packet(EPB, &out[at..], e) else {
        return;
    };
    let (iface, ts_raw, orig_len) = (p.iface, p.ts_raw, p.orig_len);
    let data = p.data.to_vec();
    let mut opts: Vec<(u16, Vec<u8>)> = options(p.options, e)
        .map(|(c, v)| (c, v.to_vec()))
        .collect();
    opts.push((OPT_COMMENT, option_text(comment).as_bytes().to_vec()));
    out.truncate(at);
    put_block(out, EPB, |b| {
        b.extend_from_slice(&iface.to_ne_bytes());
        b.extend_from_slice(&((ts_raw >> 32) as u32).to_ne_bytes());
        b.extend_from_slice(&(ts_raw as u32).to_ne_bytes());
        b.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        b.extend_from_slice(&orig_len.to_ne_bytes());
        b.extend_from_slice(&data);
        b.resize(b.len() + data.len().next_multiple_of(4) - data.len(), 0);
        for (code, v) in &opts {
            put_option(b, *code, v);
        }
        put_option(b, OPT_END, &[]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Encoder, Format, InterfaceInfo, PacketInfo};
    use crate::wire::erspan::Direction;

    fn sample() -> Vec<u8> {
        let mut enc = Encoder::new(Format::Pcapng);
        enc.add_interface(&InterfaceInfo {
            link: LinkType::Ethernet,
            name: "10.0.0.5 erspan-ii session 42".into(),
            description: "d".into(),
            snaplen: 65535,
        })
        .unwrap();
        enc.packet(
            0,
            &PacketInfo {
                ts_ns: 1_700_000_000_123_456_789,
                orig_len: 70,
                data: &[7; 61],
                direction: Some(Direction::Egress),
                comment: Some("tapwire: sequence gap, 1 lost"),
            },
        )
        .unwrap();
        enc.take_bytes()
    }

    /// Walks `b` block by block (native order).
    fn blocks(b: &[u8]) -> Vec<(u32, &[u8])> {
        let mut v = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let Framed::Block { kind, len, .. } = frame(&b[at..], Endian::native()) else {
                panic!("not framed at {at}");
            };
            v.push((kind, &b[at..at + len]));
            at += len;
        }
        v
    }

    #[test]
    fn fields_of_what_the_encoder_writes() {
        let b = sample();
        let bl = blocks(&b);
        assert_eq!(bl.iter().map(|x| x.0).collect::<Vec<_>>(), [SHB, IDB, EPB]);
        let ifc = interface(bl[1].1, Endian::native()).unwrap();
        assert_eq!(ifc.link, LinkType::Ethernet);
        assert_eq!(ifc.ts.resol, 9);
        assert_eq!(ifc.name.as_deref(), Some("10.0.0.5 erspan-ii session 42"));
        let p = packet(EPB, bl[2].1, Endian::native()).unwrap();
        assert_eq!(ifc.ts.to_ns(p.ts_raw), 1_700_000_000_123_456_789);
        assert_eq!((p.data, p.orig_len), (&[7u8; 61][..], 70));
        assert_eq!(
            comments(p.options, Endian::native()).collect::<Vec<_>>(),
            ["tapwire: sequence gap, 1 lost"]
        );
        assert_eq!(
            frame(&b[..10], Endian::native()),
            Framed::Incomplete { needed: 12 }
        );
        let mut bad = b.clone();
        bad[4] = 13;
        assert_eq!(frame(&bad, Endian::native()), Framed::Corrupt);
    }

    #[test]
    fn time_units() {
        let us = TsUnits::default();
        assert_eq!(us.to_ns(1_500_000), 1_500_000_000);
        let two = TsUnits {
            resol: 0x80 | 10,
            offset_s: 1,
        };
        assert_eq!(two.to_ns(1024), 2_000_000_000);
        let ps = TsUnits {
            resol: 12,
            offset_s: 0,
        };
        assert_eq!(ps.to_ns(5_000), 5);
        assert_eq!(
            TsUnits {
                resol: 9,
                offset_s: -10
            }
            .to_ns(5),
            0
        );
    }

    /// A big-endian file turned native reads the same as the native one (pcap-file parses both).
    #[test]
    fn the_other_byte_order_is_turned() {
        use pcap_file::pcapng::{Block, PcapNgReader};
        let native = sample();
        let bl = blocks(&native);
        // Swap by hand what the conversion should undo: fixed words and option headers.
        let swap_idb = |b: &[u8]| -> Vec<u8> {
            let mut o = b.to_vec();
            for at in [0, 4, 12, o.len() - 4] {
                o[at..at + 4].reverse();
            }
            o[8..10].reverse();
            let mut at = 16;
            while at + 4 <= o.len() - 4 {
                let code = u16::from_ne_bytes([o[at], o[at + 1]]);
                let len = usize::from(u16::from_ne_bytes([o[at + 2], o[at + 3]]));
                o[at..at + 2].reverse();
                o[at + 2..at + 4].reverse();
                if code == 0 {
                    break;
                }
                at += 4 + len.next_multiple_of(4);
            }
            o
        };
        let swap_epb = |b: &[u8]| -> Vec<u8> {
            let mut o = b.to_vec();
            for at in [0, 4, 8, 12, 16, 20, 24, o.len() - 4] {
                o[at..at + 4].reverse();
            }
            let caplen = u32::from_ne_bytes(b[20..24].try_into().unwrap()) as usize;
            let mut at = 28 + caplen.next_multiple_of(4);
            while at + 4 <= o.len() - 4 {
                let code = u16::from_ne_bytes([o[at], o[at + 1]]);
                let len = usize::from(u16::from_ne_bytes([o[at + 2], o[at + 3]]));
                o[at..at + 2].reverse();
                o[at + 2..at + 4].reverse();
                if code == 2 {
                    o[at + 4..at + 8].reverse();
                }
                if code == 0 {
                    break;
                }
                at += 4 + len.next_multiple_of(4);
            }
            o
        };
        let other = if Endian::native() == Endian::Little {
            Endian::Big
        } else {
            Endian::Little
        };
        let idb = swap_idb(bl[1].1);
        let epb = swap_epb(bl[2].1);
        assert_eq!(
            frame(&epb, other),
            Framed::Block {
                kind: EPB,
                len: epb.len(),
                endian: other
            }
        );
        assert_eq!(interface(&idb, other), interface(bl[1].1, Endian::native()));
        let (a, b) = (
            packet(EPB, &epb, other).unwrap(),
            packet(EPB, bl[2].1, Endian::native()).unwrap(),
        );
        assert_eq!(
            (a.iface, a.ts_raw, a.orig_len, a.data),
            (b.iface, b.ts_raw, b.orig_len, b.data)
        );
        assert_eq!(
            comments(a.options, other).collect::<Vec<_>>(),
            ["tapwire: sequence gap, 1 lost"]
        );
        let mut back = Vec::new();
        to_native(IDB, &idb, other, &mut back).unwrap();
        to_native(EPB, &epb, other, &mut back).unwrap();
        assert_eq!(back, [bl[1].1, bl[2].1].concat());
        // And the output helpers write what pcap-file reads.
        let mut out = Vec::new();
        put_section_header(&mut out, "tapwire query", &["from a to b".into()]);
        put_interface(&mut out, LinkType::Raw, 100, "x");
        put_packet(&mut out, 0, 5, 9, &[0x45; 9], &[]);
        let at = out.len();
        put_packet(&mut out, 0, 6, 3, &[1, 2, 3], &["a"]);
        add_comment(&mut out, at, "damage noted");
        let mut r = PcapNgReader::new(&out[..]).unwrap();
        let mut n = 0;
        while let Some(b) = r.next_block() {
            if let (Block::EnhancedPacket(p), _) = b.unwrap() {
                n += 1;
                if n == 2 {
                    assert_eq!(p.options.len(), 2);
                    assert_eq!(&p.data[..], &[1, 2, 3]);
                }
            }
        }
        assert_eq!(n, 2);
    }
}
