//! IPv4 header (RFC 791) as the outer header of mirrored traffic: addresses, protocol,
//! fragmentation, and a payload bounded by `total length` (link padding is dropped).

use core::fmt;
use std::net::Ipv4Addr;

use super::{Error, Layer, Result, be16, internet_checksum, ip::Protocol, need, set_be16};

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// The length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Validates version, header length and that `total length` fits the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let data = p.buffer.as_ref();
        need(Layer::Ipv4, data, MIN_HEADER_LEN)?;
        if p.version() != 4 {
            return Err(Error::Version {
                layer: Layer::Ipv4,
                version: p.version(),
            });
        }
        let hlen = p.header_len();
        if hlen < MIN_HEADER_LEN || usize::from(p.total_len()) < hlen {
            return Err(Error::Malformed {
                layer: Layer::Ipv4,
                what: "length",
            });
        }
        need(Layer::Ipv4, data, usize::from(p.total_len()))?;
        Ok(p)
    }

    /// The version nibble (4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header's length in bytes, options included (`IHL` × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP and ECN byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The packet's length in bytes, header included.
    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The identification, shared by a datagram's fragments.
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    /// `DF`: do not fragment.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x4000 != 0
    }

    /// `MF`: more fragments follow.
    #[inline]
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x2000 != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::FLG_OFF) & 0x1fff) * 8
    }

    /// Whether this is a fragment (`MF` set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// What the payload is.
    #[inline]
    pub fn protocol(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The header checksum as carried.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(
            d[field::SRC],
            d[field::SRC + 1],
            d[field::SRC + 2],
            d[field::SRC + 3],
        )
    }

    /// The destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(
            d[field::DST],
            d[field::DST + 1],
            d[field::DST + 2],
            d[field::DST + 3],
        )
    }

    /// Whether the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        internet_checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload: after the header, up to the total length.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Computes the header checksum and writes it.
    pub fn fill_checksum(&mut self) {
        let hlen = self.header_len();
        let buf = self.buffer.as_mut();
        set_be16(buf, field::CHECKSUM, 0);
        let sum = internet_checksum(&buf[..hlen]);
        set_be16(buf, field::CHECKSUM, sum);
    }
}

/// An owned IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source address.
    pub src_addr: Ipv4Addr,
    /// The destination address.
    pub dst_addr: Ipv4Addr,
    /// What the payload is.
    pub protocol: Protocol,
    /// The payload's length in bytes.
    pub payload_len: usize,
    /// The time to live.
    pub ttl: u8,
    /// The identification.
    pub ident: u16,
    /// `DF`: do not fragment.
    pub dont_frag: bool,
}

impl Repr {
    /// Parses an unfragmented header; options are skipped.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if p.is_fragment() {
            return Err(Error::Unsupported {
                layer: Layer::Ipv4,
                what: "fragment",
            });
        }
        Ok(Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
            ttl: p.ttl(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    /// The header's length in bytes.
    pub const fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes the header and its checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let buf = p.buffer.as_mut();
        buf[field::VER_IHL] = 0x45;
        buf[field::DSCP_ECN] = 0;
        set_be16(
            buf,
            field::LENGTH,
            (MIN_HEADER_LEN + self.payload_len) as u16,
        );
        set_be16(buf, field::IDENT, self.ident);
        set_be16(buf, field::FLG_OFF, if self.dont_frag { 0x4000 } else { 0 });
        buf[field::TTL] = self.ttl;
        buf[field::PROTOCOL] = self.protocol.into();
        buf[field::SRC..field::SRC + 4].copy_from_slice(&self.src_addr.octets());
        buf[field::DST..field::DST + 4].copy_from_slice(&self.dst_addr.octets());
        p.fill_checksum();
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPv4 {} > {} proto={} len={}",
            self.src_addr, self.dst_addr, self.protocol, self.payload_len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // tcpdump's erspan-type-ii-1.pcap: 1.1.1.2 > 192.168.255.5, GRE, total length 0x6c.
    const HDR: [u8; 20] = [
        0x45, 0xfc, 0x00, 0x6c, 0x00, 0xab, 0x40, 0x00, 0xfb, 0x2f, 0xbc, 0x0a, 0x01, 0x01, 0x01,
        0x02, 0xc0, 0xa8, 0xff, 0x05,
    ];

    #[test]
    fn real_header() {
        let mut b = HDR.to_vec();
        b.resize(0x6c + 4, 0); // four bytes of Ethernet padding after the datagram
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.protocol(), Protocol::Gre);
        assert_eq!(p.src_addr(), Ipv4Addr::new(1, 1, 1, 2));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 255, 5));
        assert_eq!(p.payload().len(), 0x6c - 20);
        assert!(!p.is_fragment());
    }

    #[test]
    fn lengths_that_lie() {
        assert_eq!(
            Packet::new_checked(&HDR[..]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Ipv4,
                needed: 0x6c,
                got: 20
            }
        );
        let mut b = HDR;
        b[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            Error::Malformed {
                layer: Layer::Ipv4,
                what: "length"
            }
        );
        b[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            Error::Version {
                layer: Layer::Ipv4,
                version: 6
            }
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len in 0usize..1480,
                           ttl: u8, ident: u16, dont_frag: bool) {
            let repr = Repr {
                src_addr: src.into(), dst_addr: dst.into(), protocol: Protocol::from(proto),
                payload_len, ttl, ident, dont_frag,
            };
            let mut buf = vec![0u8; MIN_HEADER_LEN + payload_len];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(Repr::parse(&p).unwrap(), repr);
        }
    }
}
