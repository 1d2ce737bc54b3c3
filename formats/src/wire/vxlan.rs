//! VXLAN (RFC 7348): an 8-byte header on UDP 4789 whose `I` flag marks a valid 24-bit VNI.
//! AWS VPC Traffic Mirroring uses it with the mirror session's VNI.

use core::fmt;

use super::{Error, Layer, Result, be32, bounded_field, need, set_be32};

bounded_field!(
    /// A 24-bit virtual network identifier.
    Vni,
    u32,
    24
);

mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: usize = 4;
}

const I: u8 = 0x08;
/// The length of a VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The UDP port VXLAN is sent to.
pub const PORT: u16 = 4789;

/// A view of a VXLAN packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view of `buffer`, checked once to hold the whole header: no accessor can panic after it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        need(Layer::Vxlan, buffer.as_ref(), HEADER_LEN)?;
        Ok(Self::new_unchecked(buffer))
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// `I`: the VNI is valid.
    pub fn vni_valid(&self) -> bool {
        self.flags() & I != 0
    }

    /// The VXLAN network identifier.
    pub fn vni(&self) -> Vni {
        Vni::from_bits(be32(self.buffer.as_ref(), field::VNI) >> 8)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The Ethernet frame after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// An owned VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The VXLAN network identifier.
    pub vni: Vni,
}

impl Repr {
    /// A header without the `I` flag carries no VNI and is [`Error::Malformed`].
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if !p.vni_valid() {
            return Err(Error::Malformed {
                layer: Layer::Vxlan,
                what: "flags",
            });
        }
        Ok(Repr { vni: p.vni() })
    }

    /// The header's length in bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header at the start of `p`'s buffer, which holds [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let buf = p.buffer.as_mut();
        buf[..HEADER_LEN].fill(0);
        buf[field::FLAGS] = I;
        set_be32(buf, field::VNI, self.vni.value() << 8);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VXLAN vni={}", self.vni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // tcpdump's vxlan.pcap, first packet: I flag, VNI 100.
    const HDR: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00];

    #[test]
    fn vni() {
        let p = Packet::new_checked(&HDR[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap().vni.value(), 100);
        let no_i = [0u8; 8];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&no_i[..]).unwrap()).unwrap_err(),
            Error::Malformed {
                layer: Layer::Vxlan,
                what: "flags"
            }
        );
        assert_eq!(
            Packet::new_checked(&HDR[..3]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Vxlan,
                needed: 8,
                got: 3
            }
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(vni in 0..=0xff_ffffu32) {
            let repr = Repr { vni: Vni::try_new(vni).unwrap() };
            let mut buf = [0u8; HEADER_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }
    }
}
