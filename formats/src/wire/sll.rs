//! Linux cooked capture headers: SLL (LINKTYPE_LINUX_SLL, 16 bytes) and SLL2
//! (LINKTYPE_LINUX_SLL2, 20 bytes). Both end in the payload's EtherType.

use super::{Layer, Result, be16, be32, ethernet::EtherType, need};

/// The length of an SLL header.
pub const SLL_HEADER_LEN: usize = 16;
/// The length of an SLL2 header.
pub const SLL2_HEADER_LEN: usize = 20;

/// `sll_pkttype`: who the frame was for.
pub mod pkttype {
    /// To this host.
    pub const HOST: u16 = 0;
    /// Broadcast.
    pub const BROADCAST: u16 = 1;
    /// Multicast.
    pub const MULTICAST: u16 = 2;
    /// To another host (promiscuous capture).
    pub const OTHERHOST: u16 = 3;
    /// Sent by this host.
    pub const OUTGOING: u16 = 4;
}

/// The fields tapwire uses from either cooked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooked {
    /// Who the frame was for: one of [`pkttype`].
    pub pkttype: u16,
    /// The payload's EtherType.
    pub ethertype: EtherType,
    /// The interface index (SLL2 only).
    pub ifindex: Option<u32>,
    /// The header's length in bytes.
    pub header_len: usize,
}

/// An SLL header.
pub fn parse_sll(data: &[u8]) -> Result<Cooked> {
    need(Layer::Sll, data, SLL_HEADER_LEN)?;
    Ok(Cooked {
        pkttype: be16(data, 0),
        ethertype: EtherType::from(be16(data, 14)),
        ifindex: None,
        header_len: SLL_HEADER_LEN,
    })
}

/// An SLL2 header.
pub fn parse_sll2(data: &[u8]) -> Result<Cooked> {
    need(Layer::Sll2, data, SLL2_HEADER_LEN)?;
    Ok(Cooked {
        pkttype: u16::from(data[10]),
        ethertype: EtherType::from(be16(data, 0)),
        ifindex: Some(be32(data, 4)),
        header_len: SLL2_HEADER_LEN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    #[test]
    fn sll_and_sll2() {
        let sll = [0, 4, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        assert_eq!(
            parse_sll(&sll).unwrap(),
            Cooked {
                pkttype: pkttype::OUTGOING,
                ethertype: EtherType::Ipv4,
                ifindex: None,
                header_len: 16
            }
        );
        let sll2 = [
            0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
        ];
        assert_eq!(
            parse_sll2(&sll2).unwrap(),
            Cooked {
                pkttype: pkttype::HOST,
                ethertype: EtherType::Ipv6,
                ifindex: Some(3),
                header_len: 20
            }
        );
        assert_eq!(
            parse_sll2(&sll2[..5]).unwrap_err(),
            Error::Truncated {
                layer: Layer::Sll2,
                needed: 20,
                got: 5
            }
        );
    }
}
