//! TZSP (TaZmen Sniffer Protocol) on UDP 37008, as MikroTik RouterOS's packet sniffer sends it:
//! version 1, a type, an encapsulation (1 = Ethernet), tagged fields ending with tag 1, then the
//! frame. Tag 0 is a one-byte pad; every other tag carries a length byte and that many bytes.

use core::fmt;

use super::{Error, Layer, Result, be16, need, set_be16};

mod field {
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const ENCAP: usize = 2;
    pub const FIELDS: usize = 4;
}

/// The UDP port TZSP is sent to.
pub const PORT: u16 = 37008;
/// The length of the fixed part of the header (before the tagged fields).
pub const MIN_HEADER_LEN: usize = 5;
/// A tagged field of one byte: padding.
pub const TAG_PADDING: u8 = 0;
/// The last tagged field.
pub const TAG_END: u8 = 1;
/// The encapsulation of an Ethernet frame.
pub const ENCAP_ETHERNET: u16 = 1;

/// TZSP packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// 0: a frame received on the sender's interface.
    Received,
    /// 1: a frame to transmit.
    Transmit,
    /// 3: configuration.
    Config,
    /// 4: keepalive.
    Keepalive,
    /// 5: port opener.
    PortOpener,
    /// Any other type, kept.
    Unknown(u8),
}

impl From<u8> for Type {
    fn from(v: u8) -> Self {
        match v {
            0 => Type::Received,
            1 => Type::Transmit,
            3 => Type::Config,
            4 => Type::Keepalive,
            5 => Type::PortOpener,
            other => Type::Unknown(other),
        }
    }
}

impl From<Type> for u8 {
    fn from(t: Type) -> u8 {
        match t {
            Type::Received => 0,
            Type::Transmit => 1,
            Type::Config => 3,
            Type::Keepalive => 4,
            Type::PortOpener => 5,
            Type::Unknown(v) => v,
        }
    }
}

/// A view of a TZSP packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    header_len: usize,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Walks the tagged fields once; fails if they run past the buffer or never end.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        need(Layer::Tzsp, data, MIN_HEADER_LEN)?;
        let mut at = field::FIELDS;
        loop {
            let Some(&tag) = data.get(at) else {
                return Err(Error::truncated(Layer::Tzsp, at + 1, data.len()));
            };
            match tag {
                TAG_END => {
                    at += 1;
                    break;
                }
                TAG_PADDING => at += 1,
                _ => {
                    let Some(&len) = data.get(at + 1) else {
                        return Err(Error::truncated(Layer::Tzsp, at + 2, data.len()));
                    };
                    at += 2 + usize::from(len);
                    need(Layer::Tzsp, data, at)?;
                }
            }
        }
        Ok(Packet {
            buffer,
            header_len: at,
        })
    }

    /// The version (1).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// What the packet is.
    pub fn packet_type(&self) -> Type {
        Type::from(self.buffer.as_ref()[field::TYPE])
    }

    /// The encapsulation of the frame that follows.
    pub fn encapsulation(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ENCAP)
    }

    /// The header's length in bytes, tagged fields included.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The tagged fields other than padding and the end tag, as (tag, value).
    pub fn fields(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let data = &self.buffer.as_ref()[..self.header_len];
        let mut at = field::FIELDS;
        core::iter::from_fn(move || {
            loop {
                match *data.get(at)? {
                    TAG_END => return None,
                    TAG_PADDING => at += 1,
                    tag => {
                        let len = usize::from(data[at + 1]);
                        let value = &data[at + 2..at + 2 + len];
                        at += 2 + len;
                        return Some((tag, value));
                    }
                }
            }
        })
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The frame after the tagged fields.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len..]
    }
}

/// A tagged field other than padding and end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedField {
    /// The tag.
    pub tag: u8,
    /// Its value.
    pub value: Vec<u8>,
}

/// An owned TZSP header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    /// What the packet is.
    pub packet_type: Type,
    /// The encapsulation of the frame that follows.
    pub encapsulation: u16,
    /// The tagged fields other than padding and end.
    pub fields: Vec<TaggedField>,
}

impl Repr {
    /// The header's fields, tagged fields walked (version 1 only).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if p.version() != 1 {
            return Err(Error::Version {
                layer: Layer::Tzsp,
                version: p.version(),
            });
        }
        Ok(Repr {
            packet_type: p.packet_type(),
            encapsulation: p.encapsulation(),
            fields: p
                .fields()
                .map(|(tag, v)| TaggedField {
                    tag,
                    value: v.to_vec(),
                })
                .collect(),
        })
    }

    /// The header's length in bytes, tagged fields included.
    pub fn buffer_len(&self) -> usize {
        field::FIELDS + self.fields.iter().map(|f| 2 + f.value.len()).sum::<usize>() + 1
    }

    /// Field tags must not be 0 or 1 and values at most 255 bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::VERSION] = 1;
        buf[field::TYPE] = self.packet_type.into();
        set_be16(buf, field::ENCAP, self.encapsulation);
        let mut at = field::FIELDS;
        for f in &self.fields {
            debug_assert!(f.tag > TAG_END && f.value.len() <= 255);
            buf[at] = f.tag;
            buf[at + 1] = f.value.len() as u8;
            buf[at + 2..at + 2 + f.value.len()].copy_from_slice(&f.value);
            at += 2 + f.value.len();
        }
        buf[at] = TAG_END;
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TZSP type={:?} encap={} fields={}",
            self.packet_type,
            self.encapsulation,
            self.fields.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // What RouterOS's sniffer sends: version 1, received, Ethernet, end tag, then the frame.
    const MIKROTIK: [u8; 7] = [0x01, 0x00, 0x00, 0x01, 0x01, 0xaa, 0xbb];

    #[test]
    fn mikrotik_header() {
        let p = Packet::new_checked(&MIKROTIK[..]).unwrap();
        assert_eq!(p.packet_type(), Type::Received);
        assert_eq!(p.encapsulation(), ENCAP_ETHERNET);
        assert_eq!(p.header_len(), 5);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        assert_eq!(p.fields().count(), 0);
    }

    #[test]
    fn tagged_fields_and_padding() {
        // padding, tag 10 (signal) with 1 byte, padding, end
        let b = [
            0x01, 0x00, 0x00, 0x01, 0x00, 0x0a, 0x01, 0xd3, 0x00, 0x01, 0xff,
        ];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.fields().collect::<Vec<_>>(), vec![(10u8, &[0xd3u8][..])]);
        assert_eq!(p.payload(), &[0xff]);
    }

    #[test]
    fn fields_that_never_end() {
        let b = [0x01, 0x00, 0x00, 0x01, 0x00, 0x00];
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Tzsp,
                needed: 7,
                got: 6
            }
        );
        let b = [0x01, 0x00, 0x00, 0x01, 0x0a, 0x05, 0x00];
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Tzsp,
                needed: 11,
                got: 7
            }
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(t: u8, encapsulation: u16,
                           fields in proptest::collection::vec((2u8.., proptest::collection::vec(any::<u8>(), 0..40)), 0..5)) {
            let repr = Repr {
                packet_type: Type::from(t),
                encapsulation,
                fields: fields.into_iter().map(|(tag, value)| TaggedField { tag, value }).collect(),
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut buf);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn never_panics(data: Vec<u8>) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&p);
                let _ = p.payload();
            }
        }
    }
}
