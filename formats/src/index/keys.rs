//! What the index keeps of one inner frame, read at the offsets libpcap's programs read them.
//!
//! libpcap compiles `host 10.0.0.5` for Ethernet into loads at fixed offsets behind an
//! ethertype check (`[12] == 0x0800`, then the words at 26 and 30), with no check of the IP
//! version or header length, and a classic BPF load past the end of the frame rejects the
//! frame. So the keys are read the same way: every field libpcap could compare is recorded
//! when its bytes are present, whatever the rest of the header says. A key recorded that
//! libpcap would not look at only costs pruning; a key libpcap could match that is not
//! recorded would be a packet the index loses, which the planner's property test (against
//! libpcap on random frames) rules out.
//!
//! The same pass classifies the frame for the traffic mix the collector shows (VLAN tags
//! walked, IP version checked), so the engine parses each inner frame once.

use core::net::IpAddr;

use crate::capture::LinkType;

/// Kinds of frame seen in a block, as bits of [`FrameKeys::kind`].
pub mod kind {
    /// Ethernet, ethertype 0x0800 (no VLAN tag).
    pub const ETH_IPV4: u16 = 1;
    /// Ethernet, ethertype 0x86dd (no VLAN tag).
    pub const ETH_IPV6: u16 = 1 << 1;
    /// Ethernet, ethertype 0x0806 (ARP) or 0x8035 (RARP).
    pub const ETH_ARP: u16 = 1 << 2;
    /// Any other Ethernet frame: VLAN-tagged, other ethertypes, shorter than a header.
    pub const ETH_OTHER: u16 = 1 << 3;
    /// Raw IP, version 4.
    pub const RAW_IPV4: u16 = 1 << 4;
    /// Raw IP, version 6.
    pub const RAW_IPV6: u16 = 1 << 5;
    /// Raw IP of another version, or empty.
    pub const RAW_OTHER: u16 = 1 << 6;
    /// A link type whose frames are not read for keys: every question about them is "maybe".
    pub const OTHER_LINK: u16 = 1 << 7;
    /// Every bit defined in this version.
    pub const ALL: u16 = (1 << 8) - 1;
}

/// IP protocols whose ports libpcap's `port` reads: SCTP, TCP, UDP.
const PORT_PROTOS: [u8; 3] = [132, 6, 17];
/// IPv6 fragment header: libpcap's `proto N` for IPv6 looks behind one.
const IPV6_FRAGMENT: u8 = 44;

/// The keys of one frame: what the index records of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameKeys {
    /// One of the [`kind`] bits.
    pub kind: u16,
    /// IPv4 addresses (source, destination; sender and target for ARP).
    pub v4: [Option<u32>; 2],
    /// IPv6 addresses (source, destination).
    pub v6: [Option<u128>; 2],
    /// IP protocol numbers (the header's, and for IPv6 the one behind a fragment header).
    pub protos: [Option<u8>; 2],
    /// Ports (source, destination) of TCP, UDP and SCTP.
    pub ports: [Option<u16>; 2],
}

/// The network layer as the traffic mix counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4 (VLAN tags walked, version and length checked).
    Ipv4,
    /// IPv6.
    Ipv6,
    /// ARP.
    Arp,
    /// Anything else.
    Other,
    /// Not counted: an Ethernet frame shorter than its header.
    Uncounted,
}

/// The frame as the traffic mix counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Its network layer.
    pub l3: L3,
    /// The IP protocol, for IP.
    pub proto: Option<u8>,
    /// The IP source address, for IP.
    pub src: Option<IpAddr>,
}

/// One inner frame, parsed once: its index keys and its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    /// What the index records.
    pub keys: FrameKeys,
    /// What the traffic mix counts.
    pub class: Class,
}

impl Inner {
    /// Parses `frame` of link type `link`.
    #[inline]
    pub fn parse(link: LinkType, frame: &[u8]) -> Inner {
        match link {
            LinkType::Ethernet => Inner {
                keys: FrameKeys::ethernet(frame),
                class: classify_ethernet(frame),
            },
            LinkType::Raw => Inner {
                keys: FrameKeys::raw(frame),
                class: classify_ip(frame),
            },
            _ => Inner {
                keys: FrameKeys {
                    kind: kind::OTHER_LINK,
                    ..FrameKeys::default()
                },
                class: classify_ethernet(frame),
            },
        }
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(*b.get(at..)?.first_chunk::<2>()?))
}

#[inline]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(*b.get(at..)?.first_chunk::<4>()?))
}

/// An IPv6 address at `at`, or as many of its 32-bit words as the frame holds, the rest zero:
/// libpcap's `net X/L` loads only the words its mask needs, so a frame cut inside an address
/// can match a short prefix (a zero-padded address matches exactly the prefixes of the words
/// present).
#[inline]
fn be128(b: &[u8], at: usize) -> Option<u128> {
    let have = b.get(at..)?;
    if let Some(w) = have.first_chunk::<16>() {
        return Some(u128::from_be_bytes(*w));
    }
    let words = have.len() / 4;
    if words == 0 {
        return None;
    }
    let mut a = [0u8; 16];
    a[..4 * words].copy_from_slice(&have[..4 * words]);
    Some(u128::from_be_bytes(a))
}

impl FrameKeys {
    /// The keys of a frame of link type `link` (Ethernet and raw IP are read; other link
    /// types are marked [`kind::OTHER_LINK`]).
    pub fn of(link: LinkType, frame: &[u8]) -> FrameKeys {
        match link {
            LinkType::Ethernet => FrameKeys::ethernet(frame),
            LinkType::Raw => FrameKeys::raw(frame),
            _ => FrameKeys {
                kind: kind::OTHER_LINK,
                ..FrameKeys::default()
            },
        }
    }

    /// An Ethernet frame: the network header starts at 14, behind the ethertype at 12.
    #[inline]
    pub fn ethernet(f: &[u8]) -> FrameKeys {
        let mut k = FrameKeys::default();
        match be16(f, 12) {
            Some(0x0800) => {
                k.kind = kind::ETH_IPV4;
                k.ipv4(f, 14);
            }
            Some(0x86dd) => {
                k.kind = kind::ETH_IPV6;
                k.ipv6(f, 14);
            }
            Some(0x0806 | 0x8035) => {
                k.kind = kind::ETH_ARP;
                // Sender and target protocol addresses of an Ethernet/IPv4 ARP message.
                k.v4 = [be32(f, 28), be32(f, 38)];
            }
            _ => k.kind = kind::ETH_OTHER,
        }
        k
    }

    /// A raw IP frame (LINKTYPE_RAW): the version nibble tells IPv4 from IPv6.
    #[inline]
    pub fn raw(f: &[u8]) -> FrameKeys {
        let mut k = FrameKeys::default();
        match f.first().map(|b| b >> 4) {
            Some(4) => {
                k.kind = kind::RAW_IPV4;
                k.ipv4(f, 0);
            }
            Some(6) => {
                k.kind = kind::RAW_IPV6;
                k.ipv6(f, 0);
            }
            _ => k.kind = kind::RAW_OTHER,
        }
        k
    }

    /// An IPv4 header at `at`, read as libpcap reads it: addresses at fixed offsets, ports
    /// behind the header length the first byte claims, only in unfragmented or first
    /// fragments of TCP, UDP and SCTP.
    #[inline]
    fn ipv4(&mut self, f: &[u8], at: usize) {
        self.v4 = [be32(f, at + 12), be32(f, at + 16)];
        let proto = f.get(at + 9).copied();
        self.protos[0] = proto;
        if let Some(p) = proto
            && PORT_PROTOS.contains(&p)
            && be16(f, at + 6).is_some_and(|frag| frag & 0x1fff == 0)
            && let Some(&vihl) = f.get(at)
        {
            let l4 = at + 4 * usize::from(vihl & 0x0f);
            self.ports = [be16(f, l4), be16(f, l4 + 2)];
        }
    }

    /// An IPv6 header at `at`: addresses, the next header (and the one behind a fragment
    /// header), ports right behind the fixed header for TCP, UDP and SCTP.
    #[inline]
    fn ipv6(&mut self, f: &[u8], at: usize) {
        self.v6 = [be128(f, at + 8), be128(f, at + 24)];
        let next = f.get(at + 6).copied();
        self.protos[0] = next;
        match next {
            Some(IPV6_FRAGMENT) => self.protos[1] = f.get(at + 40).copied(),
            Some(p) if PORT_PROTOS.contains(&p) => {
                self.ports = [be16(f, at + 40), be16(f, at + 42)];
            }
            _ => {}
        }
    }
}

/// The traffic mix's view of an Ethernet frame: VLAN tags walked, then the IP header checked.
fn classify_ethernet(frame: &[u8]) -> Class {
    use crate::wire::ethernet::{EtherType, Frame};
    let Ok(f) = Frame::new_checked(frame) else {
        return Class {
            l3: L3::Uncounted,
            proto: None,
            src: None,
        };
    };
    let other = Class {
        l3: L3::Other,
        proto: None,
        src: None,
    };
    match f.untag().ok().map(|u| (u.ethertype, u.offset)) {
        Some((EtherType::Ipv4 | EtherType::Ipv6, off)) => {
            frame.get(off..).map_or(other, classify_ip)
        }
        Some((EtherType::Arp, _)) => Class {
            l3: L3::Arp,
            proto: None,
            src: None,
        },
        _ => other,
    }
}

/// The traffic mix's view of an IP datagram: the version nibble, and a header that fits.
fn classify_ip(ip: &[u8]) -> Class {
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => Class {
            l3: L3::Ipv4,
            proto: Some(ip[9]),
            src: Some(IpAddr::from([ip[12], ip[13], ip[14], ip[15]])),
        },
        Some(6) if ip.len() >= 40 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[8..24]);
            Class {
                l3: L3::Ipv6,
                proto: Some(ip[6]),
                src: Some(IpAddr::from(a)),
            }
        }
        _ => Class {
            l3: L3::Other,
            proto: None,
            src: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4_tcp(ihl: u8, frag: u16) -> Vec<u8> {
        let mut ip = vec![0x40 | ihl, 0, 0, 40, 0, 0];
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        ip.resize(4 * usize::from(ihl), 0);
        ip.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 0, 0, 0]);
        ip
    }

    #[test]
    fn ipv4_keys_follow_libpcap_offsets() {
        let k = FrameKeys::ethernet(&eth(0x0800, &ipv4_tcp(5, 0)));
        assert_eq!(k.kind, kind::ETH_IPV4);
        assert_eq!(k.v4, [Some(0x0a00_0001), Some(0x0a00_0002)]);
        assert_eq!(k.protos, [Some(6), None]);
        assert_eq!(k.ports, [Some(12345), Some(80)]);
        // Options: the ports move with the header length.
        let k = FrameKeys::ethernet(&eth(0x0800, &ipv4_tcp(7, 0)));
        assert_eq!(k.ports, [Some(12345), Some(80)]);
        // A later fragment has no ports; a first fragment (MF set, offset 0) has.
        let k = FrameKeys::ethernet(&eth(0x0800, &ipv4_tcp(5, 0x0001)));
        assert_eq!(k.ports, [None, None]);
        let k = FrameKeys::ethernet(&eth(0x0800, &ipv4_tcp(5, 0x2000)));
        assert_eq!(k.ports, [Some(12345), Some(80)]);
        // Cut inside the destination address: the source is still there for libpcap.
        let f = eth(0x0800, &ipv4_tcp(5, 0));
        let k = FrameKeys::ethernet(&f[..32]);
        assert_eq!(k.v4, [Some(0x0a00_0001), None]);
        // A VLAN tag: libpcap's `host` looks at no address of it.
        let mut tagged = vec![0, 100, 0x08, 0];
        tagged.extend_from_slice(&ipv4_tcp(5, 0));
        let k = FrameKeys::ethernet(&eth(0x8100, &tagged));
        assert_eq!(
            k,
            FrameKeys {
                kind: kind::ETH_OTHER,
                ..FrameKeys::default()
            }
        );
        // Raw IP, and the same datagram read from it.
        let k = FrameKeys::raw(&ipv4_tcp(5, 0));
        assert_eq!(k.kind, kind::RAW_IPV4);
        assert_eq!(k.ports, [Some(12345), Some(80)]);
    }

    #[test]
    fn ipv6_and_arp_keys() {
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 8, 44, 64];
        ip6.extend_from_slice(&[0x20; 16]);
        ip6.extend_from_slice(&[0x30; 16]);
        ip6.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 0]);
        let k = FrameKeys::ethernet(&eth(0x86dd, &ip6));
        assert_eq!(k.kind, kind::ETH_IPV6);
        assert_eq!(
            k.v6,
            [
                Some(u128::from_be_bytes([0x20; 16])),
                Some(u128::from_be_bytes([0x30; 16]))
            ]
        );
        assert_eq!(k.protos, [Some(44), Some(17)]);
        assert_eq!(k.ports, [None, None]);
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1];
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let k = FrameKeys::ethernet(&eth(0x0806, &arp));
        assert_eq!(
            (k.kind, k.v4),
            (kind::ETH_ARP, [Some(0x0a00_0001), Some(0x0a00_0002)])
        );
        assert_eq!(FrameKeys::ethernet(&[0; 10]).kind, kind::ETH_OTHER);
        assert_eq!(FrameKeys::raw(&[]).kind, kind::RAW_OTHER);
        assert_eq!(
            FrameKeys::of(LinkType::LinuxSll, &[0; 40]).kind,
            kind::OTHER_LINK
        );
    }

    #[test]
    fn class_walks_vlan_tags_and_checks_the_header() {
        let mut tagged = vec![0, 100, 0x08, 0];
        tagged.extend_from_slice(&ipv4_tcp(5, 0));
        let c = Inner::parse(LinkType::Ethernet, &eth(0x8100, &tagged)).class;
        assert_eq!((c.l3, c.proto), (L3::Ipv4, Some(6)));
        assert_eq!(c.src, Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(
            Inner::parse(LinkType::Ethernet, &[0; 10]).class.l3,
            L3::Uncounted
        );
        assert_eq!(
            Inner::parse(LinkType::Ethernet, &eth(0x0800, &[0x45; 10]))
                .class
                .l3,
            L3::Other
        );
        assert_eq!(
            Inner::parse(LinkType::Ethernet, &eth(0x0806, &[0; 28]))
                .class
                .l3,
            L3::Arp
        );
    }
}
