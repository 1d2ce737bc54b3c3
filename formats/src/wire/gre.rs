//! GRE (RFC 2784, RFC 2890 key and sequence; RFC 2637 enhanced GRE for PPTP).
//!
//! ```text
//! |C|R|K|S|s|Recur|A| Flags | Ver |        Protocol Type          |
//! [ Checksum (C or R)             |     Offset (C or R)            ]
//! [ Key (K)                                                        ]
//! [ Sequence Number (S)                                            ]
//! [ Acknowledgment Number (version 1 with A)                       ]
//! ```
//! A set routing bit means source-route entries follow; tapwire does not decode them.

use core::fmt;

use super::{Error, Layer, Result, be16, be32, internet_checksum, need, set_be16, set_be32};

mod field {
    pub const FLAGS: usize = 0;
    pub const VERSION: usize = 1;
    pub const PROTOCOL: usize = 2;
    pub const OPTIONS: usize = 4;
}

const C: u8 = 0x80;
const R: u8 = 0x40;
const K: u8 = 0x20;
const S: u8 = 0x10;
const A: u8 = 0x80;

/// The length of a GRE header without its optional fields.
pub const MIN_HEADER_LEN: usize = 4;

/// The GRE protocol type: an EtherType naming the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// 0x88BE: ERSPAN Type I (no S bit) or Type II.
    Erspan,
    /// 0x22EB: ERSPAN Type III.
    ErspanIII,
    /// 0x6558: transparent Ethernet bridging (GRE-TEB).
    TransparentEthernet,
    /// 0x0800: a routed IPv4 tunnel.
    Ipv4,
    /// 0x86DD: a routed IPv6 tunnel.
    Ipv6,
    /// 0x880B: PPP, carried by PPTP's enhanced GRE.
    Ppp,
    /// Any other value, kept.
    Unknown(u16),
}

impl From<u16> for Protocol {
    fn from(v: u16) -> Self {
        match v {
            0x88be => Protocol::Erspan,
            0x22eb => Protocol::ErspanIII,
            0x6558 => Protocol::TransparentEthernet,
            0x0800 => Protocol::Ipv4,
            0x86dd => Protocol::Ipv6,
            0x880b => Protocol::Ppp,
            other => Protocol::Unknown(other),
        }
    }
}

impl From<Protocol> for u16 {
    fn from(p: Protocol) -> u16 {
        match p {
            Protocol::Erspan => 0x88be,
            Protocol::ErspanIII => 0x22eb,
            Protocol::TransparentEthernet => 0x6558,
            Protocol::Ipv4 => 0x0800,
            Protocol::Ipv6 => 0x86dd,
            Protocol::Ppp => 0x880b,
            Protocol::Unknown(v) => v,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x}", u16::from(*self))
    }
}

/// A read-only or read-write view of a GRE header and its payload.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Validates that the whole header, optional fields included, is present.
    /// A set routing bit is [`Error::Unsupported`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the header with the optional fields its flags announce;
    /// routing (the R bit) is refused.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        need(Layer::Gre, data, MIN_HEADER_LEN)?;
        if self.routing_present() {
            return Err(Error::Unsupported {
                layer: Layer::Gre,
                what: "routing",
            });
        }
        need(Layer::Gre, data, self.header_len())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// `C`: a checksum (and a reserved word) is present.
    #[inline]
    pub fn checksum_present(&self) -> bool {
        self.flags() & C != 0
    }

    /// `R`: source routing, which tapwire does not decode.
    #[inline]
    pub fn routing_present(&self) -> bool {
        self.flags() & R != 0
    }

    /// `K`: a key is present.
    #[inline]
    pub fn key_present(&self) -> bool {
        self.flags() & K != 0
    }

    /// `S`: a sequence number is present.
    #[inline]
    pub fn sequence_present(&self) -> bool {
        self.flags() & S != 0
    }

    /// Version 0 is GRE; version 1 is PPTP's enhanced GRE.
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION] & 0x07
    }

    #[inline]
    fn ack_present(&self) -> bool {
        self.version() == 1 && self.buffer.as_ref()[field::VERSION] & A != 0
    }

    /// What the payload is.
    #[inline]
    pub fn protocol(&self) -> Protocol {
        Protocol::from(be16(self.buffer.as_ref(), field::PROTOCOL))
    }

    /// Header length including the optional fields the flags announce.
    #[inline]
    pub fn header_len(&self) -> usize {
        let mut len = MIN_HEADER_LEN;
        if self.checksum_present() || self.routing_present() {
            len += 4;
        }
        if self.key_present() {
            len += 4;
        }
        if self.sequence_present() {
            len += 4;
        }
        if self.ack_present() {
            len += 4;
        }
        len
    }

    #[inline]
    fn key_offset(&self) -> usize {
        field::OPTIONS + if self.checksum_present() { 4 } else { 0 }
    }

    #[inline]
    fn sequence_offset(&self) -> usize {
        self.key_offset() + if self.key_present() { 4 } else { 0 }
    }

    /// The checksum, when `C` is set.
    #[inline]
    pub fn checksum(&self) -> Option<u16> {
        self.checksum_present()
            .then(|| be16(self.buffer.as_ref(), field::OPTIONS))
    }

    /// The key, when `K` is set.
    #[inline]
    pub fn key(&self) -> Option<u32> {
        self.key_present()
            .then(|| be32(self.buffer.as_ref(), self.key_offset()))
    }

    /// The sequence number, when `S` is set.
    #[inline]
    pub fn sequence(&self) -> Option<u32> {
        self.sequence_present()
            .then(|| be32(self.buffer.as_ref(), self.sequence_offset()))
    }

    /// True when no checksum is present or when it covers header and payload correctly.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        !self.checksum_present() || internet_checksum(self.buffer.as_ref()) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// What follows the header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data = self.buffer.as_ref();
        &data[self.header_len().min(data.len())..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the protocol type.
    pub fn set_protocol(&mut self, p: Protocol) {
        set_be16(self.buffer.as_mut(), field::PROTOCOL, p.into());
    }

    /// Sets the sequence number (the S bit must already be set).
    pub fn set_sequence(&mut self, seq: u32) {
        debug_assert!(self.sequence_present());
        let at = self.sequence_offset();
        set_be32(self.buffer.as_mut(), at, seq);
    }

    /// What follows the header, to write into.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }

    /// Computes the checksum over header and payload; call after the payload is in place.
    pub fn fill_checksum(&mut self) {
        if !self.checksum_present() {
            return;
        }
        set_be16(self.buffer.as_mut(), field::OPTIONS, 0);
        let sum = internet_checksum(self.buffer.as_ref());
        set_be16(self.buffer.as_mut(), field::OPTIONS, sum);
    }
}

/// An owned GRE header (version 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// What the payload is.
    pub protocol: Protocol,
    /// Whether a checksum is carried; [`Packet::fill_checksum`] computes it once the payload is in.
    pub checksum: bool,
    /// The key, when one is sent.
    pub key: Option<u32>,
    /// The sequence number, when one is sent.
    pub sequence: Option<u32>,
}

impl Repr {
    /// The header's fields (version 0 only).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 0 {
            return Err(Error::Version {
                layer: Layer::Gre,
                version: packet.version(),
            });
        }
        Ok(Repr {
            protocol: packet.protocol(),
            checksum: packet.checksum_present(),
            key: packet.key(),
            sequence: packet.sequence(),
        })
    }

    /// The header's length in bytes, with the optional fields.
    pub const fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN
            + if self.checksum { 4 } else { 0 }
            + if self.key.is_some() { 4 } else { 0 }
            + if self.sequence.is_some() { 4 } else { 0 }
    }

    /// Writes the header into the first [`Repr::buffer_len`] bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let buf = packet.buffer.as_mut();
        let mut flags = 0u8;
        if self.checksum {
            flags |= C;
        }
        if self.key.is_some() {
            flags |= K;
        }
        if self.sequence.is_some() {
            flags |= S;
        }
        buf[field::FLAGS] = flags;
        buf[field::VERSION] = 0;
        set_be16(buf, field::PROTOCOL, self.protocol.into());
        let mut at = field::OPTIONS;
        if self.checksum {
            buf[at..at + 4].fill(0);
            at += 4;
        }
        if let Some(key) = self.key {
            set_be32(buf, at, key);
            at += 4;
        }
        if let Some(seq) = self.sequence {
            set_be32(buf, at, seq);
        }
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GRE proto={}", self.protocol)?;
        if self.checksum {
            f.write_str(" csum")?;
        }
        if let Some(k) = self.key {
            write!(f, " key={k}")?;
        }
        if let Some(s) = self.sequence {
            write!(f, " seq={s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // GRE header of the first packet of tcpdump's erspan-type-ii-2.pcap: S set, 0x88be, seq 1086760.
    const ERSPAN_II_GRE: [u8; 8] = [0x10, 0x00, 0x88, 0xbe, 0x00, 0x10, 0x95, 0x28];
    // GRE-TEB with key 0x2a from zeek's erspan.pcap shape: K set, 0x6558.
    const TEB_KEY: [u8; 8] = [0x20, 0x00, 0x65, 0x58, 0x00, 0x00, 0x00, 0x2a];

    #[test]
    fn erspan_ii_header() {
        let p = Packet::new_checked(&ERSPAN_II_GRE[..]).unwrap();
        assert_eq!(p.protocol(), Protocol::Erspan);
        assert_eq!(p.sequence(), Some(1_086_760));
        assert_eq!(p.key(), None);
        assert_eq!(p.header_len(), 8);
        assert_eq!(p.payload(), &[] as &[u8]);
    }

    #[test]
    fn teb_with_key() {
        let r = Repr::parse(&Packet::new_checked(&TEB_KEY[..]).unwrap()).unwrap();
        assert_eq!(
            r,
            Repr {
                protocol: Protocol::TransparentEthernet,
                checksum: false,
                key: Some(42),
                sequence: None
            }
        );
    }

    #[test]
    fn all_options_in_order() {
        let bytes = [
            0xb0, 0x00, 0x65, 0x58, 0xab, 0xcd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00,
            0x01, 0x00,
        ];
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.checksum(), Some(0xabcd));
        assert_eq!(p.key(), Some(7));
        assert_eq!(p.sequence(), Some(256));
        assert_eq!(p.header_len(), 16);
    }

    #[test]
    fn routing_is_unsupported() {
        let bytes = [0x40, 0x00, 0x08, 0x00, 0, 0, 0, 0];
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::Unsupported {
                layer: Layer::Gre,
                what: "routing"
            }
        );
    }

    #[test]
    fn short_options_name_the_length() {
        assert_eq!(
            Packet::new_checked(&ERSPAN_II_GRE[..6]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Gre,
                needed: 8,
                got: 6
            }
        );
        assert_eq!(
            Packet::new_checked(&[0x10u8][..]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Gre,
                needed: 4,
                got: 1
            }
        );
    }

    #[test]
    fn pptp_version_1_with_ack() {
        // Enhanced GRE: K, S, A, version 1, PPP.
        let bytes = [
            0x30, 0x81, 0x88, 0x0b, 0, 4, 0, 1, 0, 0, 0, 9, 0, 0, 0, 8, 1, 2, 3, 4,
        ];
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.version(), 1);
        assert_eq!(p.protocol(), Protocol::Ppp);
        assert_eq!(p.header_len(), 16);
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert_eq!(
            Repr::parse(&p).unwrap_err(),
            Error::Version {
                layer: Layer::Gre,
                version: 1
            }
        );
    }

    #[test]
    fn checksum_round_trip() {
        let repr = Repr {
            protocol: Protocol::TransparentEthernet,
            checksum: true,
            key: None,
            sequence: Some(5),
        };
        let mut buf = vec![0u8; repr.buffer_len() + 5];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut p);
        p.payload_mut().copy_from_slice(b"hello");
        p.fill_checksum();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        let mut bad = buf.clone();
        bad[12] ^= 1;
        assert!(!Packet::new_checked(&bad[..]).unwrap().verify_checksum());
    }

    proptest! {
        #[test]
        fn emit_then_parse(proto: u16, checksum: bool, key: Option<u32>, sequence: Option<u32>) {
            let repr = Repr { protocol: Protocol::from(proto), checksum, key, sequence };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            let parsed = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
            prop_assert_eq!(parsed, repr);
        }

        #[test]
        fn never_panics(data: Vec<u8>) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = (p.protocol(), p.key(), p.sequence(), p.checksum(), p.payload(), p.verify_checksum());
            }
        }
    }
}
