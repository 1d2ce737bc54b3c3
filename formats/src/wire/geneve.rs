//! GENEVE (RFC 8926) on UDP 6081: an 8-byte header, `opt_len` 4-byte words of options, then the
//! payload named by `protocol` (0x6558 for Ethernet).
//!
//! ```text
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! [ Option Class (16) | Type (8) | R (3) | Len (5) | data (Len*4) ] ...
//! ```

use core::fmt;

use super::{Error, Layer, Result, be16, be32, need, set_be16, set_be32, vxlan::Vni};

mod field {
    pub const VER_OPTLEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: usize = 2;
    pub const VNI: usize = 4;
    pub const OPTIONS: usize = 8;
}

/// The length of a GENEVE header without options.
pub const MIN_HEADER_LEN: usize = 8;
/// The UDP port GENEVE is sent to.
pub const PORT: u16 = 6081;
/// The protocol type of an Ethernet frame.
pub const PROTOCOL_ETHERNET: u16 = 0x6558;

/// A view of a GENEVE packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Validates the header, the options length and that each option fits inside it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let data = p.buffer.as_ref();
        need(Layer::Geneve, data, MIN_HEADER_LEN)?;
        need(Layer::Geneve, data, p.header_len())?;
        let mut opts = p.options_raw();
        while !opts.is_empty() {
            if opts.len() < 4 {
                return Err(Error::Malformed {
                    layer: Layer::Geneve,
                    what: "option",
                });
            }
            let len = 4 + usize::from(opts[3] & 0x1f) * 4;
            if len > opts.len() {
                return Err(Error::Malformed {
                    layer: Layer::Geneve,
                    what: "option",
                });
            }
            opts = &opts[len..];
        }
        Ok(p)
    }

    /// The version (0).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPTLEN] >> 6
    }

    /// Length of the options in bytes.
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPTLEN] & 0x3f) * 4
    }

    /// `O`: an OAM packet.
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & 0x80 != 0
    }

    /// `C`: critical options are present.
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & 0x40 != 0
    }

    /// What the payload is (an EtherType).
    pub fn protocol(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PROTOCOL)
    }

    /// The virtual network identifier.
    pub fn vni(&self) -> Vni {
        Vni::from_bits(be32(self.buffer.as_ref(), field::VNI) >> 8)
    }

    /// The header's length in bytes, options included.
    pub fn header_len(&self) -> usize {
        MIN_HEADER_LEN + self.options_len()
    }

    fn options_raw(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The options, as they came.
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    /// What follows the header and its options.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// An owned GENEVE header; options are kept as their raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    /// `O`: an OAM packet.
    pub oam: bool,
    /// `C`: critical options are present.
    pub critical: bool,
    /// What the payload is (an EtherType).
    pub protocol: u16,
    /// The virtual network identifier.
    pub vni: Vni,
    /// The options, as they came.
    pub options: Vec<u8>,
}

impl Repr {
    /// The header's fields (version 0 only).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if p.version() != 0 {
            return Err(Error::Version {
                layer: Layer::Geneve,
                version: p.version(),
            });
        }
        Ok(Repr {
            oam: p.oam(),
            critical: p.critical(),
            protocol: p.protocol(),
            vni: p.vni(),
            options: p.options_raw().to_vec(),
        })
    }

    /// The header's length in bytes, options included.
    pub fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN + self.options.len()
    }

    /// `options` must be whole 4-byte words, at most 252 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        debug_assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 252);
        let buf = p.buffer.as_mut();
        buf[field::VER_OPTLEN] = (self.options.len() / 4) as u8 & 0x3f;
        buf[field::FLAGS] = (u8::from(self.oam) << 7) | (u8::from(self.critical) << 6);
        set_be16(buf, field::PROTOCOL, self.protocol);
        set_be32(buf, field::VNI, self.vni.value() << 8);
        buf[field::OPTIONS..field::OPTIONS + self.options.len()].copy_from_slice(&self.options);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GENEVE vni={} proto=0x{:04x} opts={}B",
            self.vni,
            self.protocol,
            self.options.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // zeek's geneve.pcap, first packet: 8 bytes of options (one option with one data word),
    // then the inner Ethernet frame.
    const HDR: [u8; 18] = [
        0x02, 0x00, 0x65, 0x58, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x0a, 0x76, 0xb5,
    ];

    #[test]
    fn options_are_skipped() {
        let p = Packet::new_checked(&HDR[..]).unwrap();
        assert_eq!(p.options_len(), 8);
        assert_eq!(p.protocol(), PROTOCOL_ETHERNET);
        assert_eq!(p.vni().value(), 0);
        assert_eq!(p.payload(), &[0x76, 0xb5]);
    }

    #[test]
    fn option_longer_than_options() {
        let mut b = HDR;
        b[11] = 0x02; // the option claims two data words, only one fits
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            Error::Malformed {
                layer: Layer::Geneve,
                what: "option"
            }
        );
        assert_eq!(
            Packet::new_checked(&HDR[..12]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Geneve,
                needed: 16,
                got: 12
            }
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(oam: bool, critical: bool, protocol: u16, vni in 0..=0xff_ffffu32,
                           words in proptest::collection::vec(any::<[u8; 3]>(), 0..8)) {
            // Options as a run of zero-length options keeps every option well formed.
            let options: Vec<u8> = words.iter().flat_map(|w| [w[0], w[1], w[2], 0]).collect();
            let repr = Repr { oam, critical, protocol, vni: Vni::try_new(vni).unwrap(), options };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }
    }
}
