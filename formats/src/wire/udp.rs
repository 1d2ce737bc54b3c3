//! UDP header (RFC 768). tapwire reads the ports and length; it does not verify the checksum
//! because mirror senders commonly leave it zero and the inner frame carries its own.

use core::fmt;

use super::{Error, Layer, Result, be16, need, set_be16};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// The length of a UDP header.
pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Validates the header and that the length field fits the buffer. Bytes after `length`
    /// (link padding) are ignored.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let data = p.buffer.as_ref();
        need(Layer::Udp, data, HEADER_LEN)?;
        let len = usize::from(p.length());
        if len < HEADER_LEN {
            return Err(Error::Malformed {
                layer: Layer::Udp,
                what: "length",
            });
        }
        need(Layer::Udp, data, len)?;
        Ok(p)
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[inline]
    pub fn length(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum as carried (0: none, over IPv4).
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, up to the datagram's length.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data = self.buffer.as_ref();
        &data[HEADER_LEN..usize::from(self.length()).clamp(HEADER_LEN, data.len())]
    }
}

/// An owned UDP header. The checksum is emitted as zero (allowed over IPv4; see
/// [`Repr::emit`] for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source port.
    pub src_port: u16,
    /// The destination port.
    pub dst_port: u16,
    /// The payload's length in bytes.
    pub payload_len: usize,
}

impl Repr {
    /// The header's fields.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: usize::from(p.length()) - HEADER_LEN,
        })
    }

    /// The header's length in bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with a zero checksum; IPv6 senders must fill one in afterwards.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let buf = p.buffer.as_mut();
        set_be16(buf, field::SRC_PORT, self.src_port);
        set_be16(buf, field::DST_PORT, self.dst_port);
        set_be16(buf, field::LENGTH, (self.payload_len + HEADER_LEN) as u16);
        set_be16(buf, field::CHECKSUM, 0);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UDP {} > {} len={}",
            self.src_port, self.dst_port, self.payload_len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The UDP header of the first packet of tcpdump's vxlan.pcap (dst port 4789).
    const VXLAN_UDP: [u8; 8] = [0xb0, 0x5d, 0x12, 0xb5, 0x00, 0x72, 0x00, 0x00];

    #[test]
    fn header_fields() {
        let mut b = VXLAN_UDP.to_vec();
        b.resize(0x72 + 2, 0xee); // two bytes of link padding past the length
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.dst_port(), 4789);
        assert_eq!(p.payload().len(), 0x72 - 8);
    }

    #[test]
    fn length_that_lies() {
        assert_eq!(
            Packet::new_checked(&VXLAN_UDP[..]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Udp,
                needed: 0x72,
                got: 8
            }
        );
        let short = [0, 1, 0, 2, 0, 4, 0, 0];
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            Error::Malformed {
                layer: Layer::Udp,
                what: "length"
            }
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(src_port: u16, dst_port: u16, payload_len in 0usize..1500) {
            let repr = Repr { src_port, dst_port, payload_len };
            let mut buf = vec![0u8; HEADER_LEN + payload_len];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }
    }
}
