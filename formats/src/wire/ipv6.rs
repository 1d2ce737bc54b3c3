//! IPv6 header (RFC 8200) as the outer header of mirrored traffic. [`Packet::upper_layer`]
//! walks hop-by-hop, routing, destination-options, fragment and AH extension headers to the
//! upper-layer protocol.

use core::fmt;
use std::net::Ipv6Addr;

use super::{Error, Layer, Result, be16, be32, ip::Protocol, need, set_be16};

mod field {
    pub const VER_TC_FLOW: usize = 0;
    pub const LENGTH: usize = 4;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// The length of the IPv6 fixed header.
pub const HEADER_LEN: usize = 40;
/// Extension headers walked before giving up: a chain longer than this is hostile.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Where the upper-layer header starts, and the fragment header if one was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol.
    pub protocol: Protocol,
    /// Offset from the start of the IPv6 header.
    pub offset: usize,
    /// The fragment header crossed on the way, if any.
    pub fragment: Option<Fragment>,
}

/// An IPv6 fragment header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in bytes.
    pub offset: usize,
    /// `M`: more fragments follow.
    pub more: bool,
    /// The identification, shared by a datagram's fragments.
    pub ident: u32,
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Validates version and that the payload length fits the buffer. A zero payload length
    /// (jumbogram) is refused: mirror traffic never needs one.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let data = p.buffer.as_ref();
        need(Layer::Ipv6, data, HEADER_LEN)?;
        if p.version() != 6 {
            return Err(Error::Version {
                layer: Layer::Ipv6,
                version: p.version(),
            });
        }
        if p.payload_len() == 0 && p.next_header() == Protocol::HopByHop {
            return Err(Error::Unsupported {
                layer: Layer::Ipv6,
                what: "jumbogram",
            });
        }
        need(Layer::Ipv6, data, HEADER_LEN + usize::from(p.payload_len()))?;
        Ok(p)
    }

    /// The version nibble (6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    /// The flow label.
    pub fn flow_label(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// The payload's length in bytes (extension headers included).
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The first next header.
    pub fn next_header(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::NXT_HDR])
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC..field::SRC + 16]);
        Ipv6Addr::from(a)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST..field::DST + 16]);
        Ipv6Addr::from(a)
    }

    /// The datagram: header and payload, without link padding.
    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// Walks the extension headers to the upper-layer protocol.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let data = self.datagram();
        let mut protocol = self.next_header();
        let mut at = HEADER_LEN;
        for _ in 0..MAX_EXTENSION_HEADERS {
            let len = match protocol {
                Protocol::HopByHop | Protocol::Ipv6Route | Protocol::Ipv6Opts => {
                    need(Layer::Ipv6, data, at + 2)?;
                    (usize::from(data[at + 1]) + 1) * 8
                }
                Protocol::Ah => {
                    need(Layer::Ipv6, data, at + 2)?;
                    (usize::from(data[at + 1]) + 2) * 4
                }
                Protocol::Ipv6Frag => {
                    // Fragment offsets count from here, so the walk stops: what follows is
                    // only readable once the datagram is reassembled.
                    need(Layer::Ipv6, data, at + 8)?;
                    let off_m = be16(data, at + 2);
                    let fragment = Fragment {
                        offset: usize::from(off_m & 0xfff8),
                        more: off_m & 1 != 0,
                        ident: be32(data, at + 4),
                    };
                    return Ok(UpperLayer {
                        protocol: Protocol::from(data[at]),
                        offset: at + 8,
                        fragment: Some(fragment),
                    });
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        offset: at,
                        fragment: None,
                    });
                }
            };
            need(Layer::Ipv6, data, at + len)?;
            protocol = Protocol::from(data[at]);
            at += len;
        }
        Err(Error::Unsupported {
            layer: Layer::Ipv6,
            what: "extension_chain",
        })
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the fixed header, extension headers included.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// The bytes from `offset` (from [`Packet::upper_layer`]) to the end of the datagram.
    pub fn from_offset(&self, offset: usize) -> &'a [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &self.buffer.as_ref()[offset.min(end)..end]
    }
}

/// An owned IPv6 header without extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source address.
    pub src_addr: Ipv6Addr,
    /// The destination address.
    pub dst_addr: Ipv6Addr,
    /// The first next header.
    pub next_header: Protocol,
    /// The payload's length in bytes.
    pub payload_len: usize,
    /// The hop limit.
    pub hop_limit: u8,
}

impl Repr {
    /// The fixed header's fields.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: usize::from(p.payload_len()),
            hop_limit: p.hop_limit(),
        })
    }

    /// The fixed header's length in bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header at the start of `p`'s buffer, which holds [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let buf = p.buffer.as_mut();
        buf[..4].copy_from_slice(&[0x60, 0, 0, 0]);
        set_be16(buf, field::LENGTH, self.payload_len as u16);
        buf[field::NXT_HDR] = self.next_header.into();
        buf[field::HOP_LIMIT] = self.hop_limit;
        buf[field::SRC..field::SRC + 16].copy_from_slice(&self.src_addr.octets());
        buf[field::DST..field::DST + 16].copy_from_slice(&self.dst_addr.octets());
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPv6 {} > {} nxt={} len={}",
            self.src_addr, self.dst_addr, self.next_header, self.payload_len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(next: u8, payload: &[u8]) -> Vec<u8> {
        let repr = Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: Protocol::from(next),
            payload_len: payload.len(),
            hop_limit: 64,
        };
        let mut b = vec![0u8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut b[..]));
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn walks_destination_options_to_gre() {
        // Like tcpdump's erspan-type-iii-pb-1.pcap: a destination-options header before GRE.
        let mut payload = vec![47, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[0x10, 0x00, 0x22, 0xeb]);
        let b = header(60, &payload);
        let p = Packet::new_checked(&b[..]).unwrap();
        let ul = p.upper_layer().unwrap();
        assert_eq!(ul.protocol, Protocol::Gre);
        assert_eq!(ul.offset, 48);
        assert_eq!(p.from_offset(ul.offset), &[0x10, 0x00, 0x22, 0xeb]);
        assert_eq!(ul.fragment, None);
    }

    #[test]
    fn fragment_header() {
        let payload = [47, 0, 0x00, 0x11, 0, 0, 0, 9, 1, 2, 3, 4];
        let b = header(44, &payload);
        let ul = Packet::new_checked(&b[..]).unwrap().upper_layer().unwrap();
        assert_eq!(
            ul.fragment,
            Some(Fragment {
                offset: 16,
                more: true,
                ident: 9
            })
        );
        assert_eq!(ul.protocol, Protocol::Gre);
    }

    #[test]
    fn extension_that_runs_past_the_end() {
        let b = header(60, &[47, 3, 0, 0]);
        assert!(matches!(
            Packet::new_checked(&b[..]).unwrap().upper_layer(),
            Err(Error::Truncated {
                layer: Layer::Ipv6,
                needed: 72,
                ..
            })
        ));
    }

    #[test]
    fn endless_chain_is_refused() {
        let mut payload = Vec::new();
        for _ in 0..20 {
            payload.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        let b = header(60, &payload);
        assert_eq!(
            Packet::new_checked(&b[..])
                .unwrap()
                .upper_layer()
                .unwrap_err(),
            Error::Unsupported {
                layer: Layer::Ipv6,
                what: "extension_chain"
            }
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(src: [u8; 16], dst: [u8; 16], next: u8, payload_len in 0usize..1500, hop_limit: u8) {
            let repr = Repr { src_addr: src.into(), dst_addr: dst.into(), next_header: Protocol::from(next), payload_len, hop_limit };
            prop_assume!(!(payload_len == 0 && next == 0));
            let mut buf = vec![0u8; HEADER_LEN + payload_len];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn never_panics(data: Vec<u8>) {
            if let Ok(p) = Packet::new_checked(&data[..])
                && let Ok(ul) = p.upper_layer()
            {
                let _ = p.from_offset(ul.offset);
            }
        }
    }
}
