//! Ethernet II frames with any number of 802.1Q / 802.1ad tags (up to a bound).

use core::fmt;

use super::{Error, Layer, Result, be16, need, set_be16};

mod field {
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
}

/// The length of an Ethernet II header without tags.
pub const HEADER_LEN: usize = 14;
/// The length of one VLAN tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Tags walked before giving up; real frames carry one or two.
const MAX_TAGS: usize = 4;

/// An Ethernet type: what follows the header (or a tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EtherType {
    /// 0x0800.
    Ipv4,
    /// 0x0806.
    Arp,
    /// 802.1Q C-tag.
    Vlan,
    /// 802.1ad S-tag.
    QinQ,
    /// Pre-standard QinQ.
    Vlan9100,
    /// 0x86DD.
    Ipv6,
    /// 0x6558: an Ethernet frame (as inside GRE-TEB).
    TransparentEthernet,
    /// Any other value, kept.
    Unknown(u16),
}

impl EtherType {
    /// An 802.1Q, 802.1ad or pre-standard QinQ tag's TPID.
    #[inline]
    pub const fn is_vlan_tag(self) -> bool {
        matches!(
            self,
            EtherType::Vlan | EtherType::QinQ | EtherType::Vlan9100
        )
    }
}

impl From<u16> for EtherType {
    #[inline]
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::QinQ,
            0x9100 => EtherType::Vlan9100,
            0x86dd => EtherType::Ipv6,
            0x6558 => EtherType::TransparentEthernet,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    #[inline]
    fn from(e: EtherType) -> u16 {
        match e {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88a8,
            EtherType::Vlan9100 => 0x9100,
            EtherType::Ipv6 => 0x86dd,
            EtherType::TransparentEthernet => 0x6558,
            EtherType::Unknown(v) => v,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x}", u16::from(*self))
    }
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// A view of `buffer`, checked once to hold the whole header: no accessor can panic after it.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        need(Layer::Ethernet, buffer.as_ref(), HEADER_LEN)?;
        Ok(Self::new_unchecked(buffer))
    }

    /// The destination MAC address.
    pub fn dst_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST..field::DST + 6]);
        a
    }

    /// The source MAC address.
    pub fn src_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC..field::SRC + 6]);
        a
    }

    /// The first EtherType, which may be a VLAN tag's TPID.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(be16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Walks VLAN tags to the EtherType of the payload.
    #[inline]
    pub fn untag(&self) -> Result<Untagged> {
        let data = self.buffer.as_ref();
        let mut at = field::ETHERTYPE;
        let mut vlans = [None; 2];
        for n in 0..=MAX_TAGS {
            let ethertype = EtherType::from(be16(data, at));
            if !ethertype.is_vlan_tag() {
                return Ok(Untagged {
                    ethertype,
                    offset: at + 2,
                    vlans,
                });
            }
            if n == MAX_TAGS {
                break;
            }
            need(Layer::Vlan, data, at + 2 + VLAN_TAG_LEN)?;
            if let Some(slot) = vlans.get_mut(n) {
                *slot = Some(be16(data, at + 2) & 0x0fff);
            }
            at += VLAN_TAG_LEN;
        }
        Err(Error::Unsupported {
            layer: Layer::Vlan,
            what: "tag_stack",
        })
    }
}

/// An Ethernet frame with its VLAN tags walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untagged {
    /// The EtherType after the tags.
    pub ethertype: EtherType,
    /// Offset of the payload from the start of the frame.
    pub offset: usize,
    /// The outer two VLAN ids, outermost first.
    pub vlans: [Option<u16>; 2],
}

/// An owned Ethernet II header without tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The destination MAC address.
    pub dst_addr: [u8; 6],
    /// The source MAC address.
    pub src_addr: [u8; 6],
    /// The EtherType.
    pub ethertype: EtherType,
}

impl Repr {
    /// The header's fields.
    pub fn parse<T: AsRef<[u8]>>(f: &Frame<T>) -> Result<Repr> {
        Ok(Repr {
            dst_addr: f.dst_addr(),
            src_addr: f.src_addr(),
            ethertype: f.ethertype(),
        })
    }

    /// The header's length in bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header at the start of `f`'s buffer, which holds [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, f: &mut Frame<T>) {
        let buf = f.buffer.as_mut();
        buf[field::DST..field::DST + 6].copy_from_slice(&self.dst_addr);
        buf[field::SRC..field::SRC + 6].copy_from_slice(&self.src_addr);
        set_be16(buf, field::ETHERTYPE, self.ethertype.into());
    }
}

/// Writes `frame` into `out` with an 802.1Q tag (`tci`) inserted after the addresses, as a
/// switch would have carried it. `out` is cleared first.
pub fn insert_vlan_tag(frame: &[u8], tci: u16, out: &mut Vec<u8>) -> Result<()> {
    need(Layer::Ethernet, frame, HEADER_LEN)?;
    out.clear();
    out.reserve(frame.len() + VLAN_TAG_LEN);
    out.extend_from_slice(&frame[..field::ETHERTYPE]);
    out.extend_from_slice(&0x8100u16.to_be_bytes());
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[field::ETHERTYPE..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Inner frame of zeek's gre-erspan3-dot1q.pcap: 802.1Q tag VLAN 10, then IPv4.
    const TAGGED: [u8; 20] = [
        0x00, 0x50, 0x56, 0x8b, 0x6d, 0xc7, 0x00, 0xae, 0xcd, 0x00, 0x0c, 0xf1, 0x81, 0x00, 0x00,
        0x0a, 0x08, 0x00, 0x45, 0x00,
    ];

    #[test]
    fn single_tag() {
        let u = Frame::new_checked(&TAGGED[..]).unwrap().untag().unwrap();
        assert_eq!(
            u,
            Untagged {
                ethertype: EtherType::Ipv4,
                offset: 18,
                vlans: [Some(10), None]
            }
        );
    }

    #[test]
    fn qinq() {
        let mut b = TAGGED[..12].to_vec();
        b.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0a, 0x86, 0xdd]);
        let u = Frame::new_checked(&b[..]).unwrap().untag().unwrap();
        assert_eq!(
            u,
            Untagged {
                ethertype: EtherType::Ipv6,
                offset: 22,
                vlans: [Some(100), Some(10)]
            }
        );
    }

    #[test]
    fn truncated_and_endless_tags() {
        assert_eq!(
            Frame::new_checked(&TAGGED[..15])
                .unwrap()
                .untag()
                .unwrap_err(),
            Error::Truncated {
                layer: Layer::Vlan,
                needed: 18,
                got: 15
            }
        );
        let mut b = TAGGED[..12].to_vec();
        for _ in 0..6 {
            b.extend_from_slice(&[0x81, 0x00, 0x00, 0x01]);
        }
        b.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(
            Frame::new_checked(&b[..]).unwrap().untag().unwrap_err(),
            Error::Unsupported {
                layer: Layer::Vlan,
                what: "tag_stack"
            }
        );
    }

    #[test]
    fn vlan_insertion() {
        let untagged = [&TAGGED[..12], &TAGGED[16..]].concat();
        let mut out = Vec::new();
        insert_vlan_tag(&untagged, 10, &mut out).unwrap();
        assert_eq!(out, TAGGED);
    }
}
