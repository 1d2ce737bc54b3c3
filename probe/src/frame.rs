//! The outer headers of a complete frame for the transmit ring: Ethernet and IPv4 or IPv6 in
//! front of a GRE datagram ([`crate::pipeline::Kept`]). Pure: addresses in, bytes out.
//!
//! The headers are built once per path (next-hop MAC, source and destination address) as a
//! template; per frame only the lengths change, and for IPv4 the identification and the
//! header checksum, which is the template's sum plus those two fields. IPv4 frames have DF
//! set, as the raw socket's do; the identification counts up per sender (RFC 6864 leaves it
//! free for DF datagrams; a counter keeps captures readable). IPv6 frames carry a flow label
//! fixed per (source, destination, session): routers that hash on it keep a session's packets
//! on one path, in order.

use std::net::IpAddr;

use tapwire_formats::wire::ethernet::{self, EtherType};
use tapwire_formats::wire::ip::Protocol;
use tapwire_formats::wire::{ipv4, ipv6};

use crate::pipeline::Kept;

pub const ETHERNET_HEADER_LEN: usize = 14;
/// Hop limit / TTL of the outer header (Linux's default).
pub const HOP_LIMIT: u8 = 64;
const MAX_OUTER_LEN: usize = ETHERNET_HEADER_LEN + 40;
/// Byte offsets of the per-frame fields, from the start of the frame.
const V4_TOTAL_LEN: usize = ETHERNET_HEADER_LEN + 2;
const V4_IDENT: usize = ETHERNET_HEADER_LEN + 4;
const V4_CHECKSUM: usize = ETHERNET_HEADER_LEN + 10;
const V6_PAYLOAD_LEN: usize = ETHERNET_HEADER_LEN + 4;

/// Where frames go: the next hop's MAC, this host's, and the outer addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterSpec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The GRE session (ERSPAN session id or key) the flow label is derived from.
    pub session: u16,
}

/// Why a template cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("source {src} and destination {dst} are not of one IP version")]
pub struct MixedFamilies {
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// The Ethernet and IP headers of every frame on one path.
#[derive(Debug, Clone)]
pub struct Outer {
    spec: OuterSpec,
    bytes: [u8; MAX_OUTER_LEN],
    len: usize,
    /// IPv4: the header's ones' complement sum with length, identification and checksum 0.
    base_sum: u32,
    next_ident: u16,
}

impl Outer {
    /// `first_ident`: the first IPv4 identification (any value; a random start keeps two
    /// senders' counters apart).
    pub fn new(spec: OuterSpec, first_ident: u16) -> Result<Outer, MixedFamilies> {
        let mut bytes = [0u8; MAX_OUTER_LEN];
        let (len, ethertype) = match (spec.src, spec.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut p = ipv4::Packet::new_unchecked(&mut bytes[ETHERNET_HEADER_LEN..][..20]);
                ipv4::Repr {
                    src_addr: src,
                    dst_addr: dst,
                    protocol: Protocol::Gre,
                    payload_len: 0,
                    ttl: HOP_LIMIT,
                    ident: 0,
                    dont_frag: true,
                }
                .emit(&mut p);
                (ETHERNET_HEADER_LEN + 20, EtherType::Ipv4)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut p = ipv6::Packet::new_unchecked(&mut bytes[ETHERNET_HEADER_LEN..][..40]);
                ipv6::Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: Protocol::Gre,
                    payload_len: 0,
                    hop_limit: HOP_LIMIT,
                }
                .emit(&mut p);
                let label = flow_label(&spec).to_be_bytes();
                let at = ETHERNET_HEADER_LEN;
                bytes[at + 1] = (bytes[at + 1] & 0xf0) | (label[1] & 0x0f);
                bytes[at + 2] = label[2];
                bytes[at + 3] = label[3];
                (ETHERNET_HEADER_LEN + 40, EtherType::Ipv6)
            }
            (src, dst) => return Err(MixedFamilies { src, dst }),
        };
        ethernet::Repr {
            dst_addr: spec.dst_mac,
            src_addr: spec.src_mac,
            ethertype,
        }
        .emit(&mut ethernet::Frame::new_unchecked(
            &mut bytes[..ETHERNET_HEADER_LEN],
        ));
        let mut outer = Outer {
            spec,
            bytes,
            len,
            base_sum: 0,
            next_ident: first_ident,
        };
        if ethertype == EtherType::Ipv4 {
            outer.bytes[V4_TOTAL_LEN..V4_TOTAL_LEN + 2].fill(0);
            outer.bytes[V4_CHECKSUM..V4_CHECKSUM + 2].fill(0);
            outer.base_sum = sum16(&outer.bytes[ETHERNET_HEADER_LEN..len]);
        }
        Ok(outer)
    }

    pub fn spec(&self) -> &OuterSpec {
        &self.spec
    }

    /// The identification the next IPv4 frame gets.
    pub fn next_ident(&self) -> u16 {
        self.next_ident
    }

    /// Bytes of Ethernet and IP header: 34 (IPv4) or 54 (IPv6).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_ipv6(&self) -> bool {
        self.spec.dst.is_ipv6()
    }

    /// The frame's length for a GRE datagram of `gre_len` bytes.
    pub fn frame_len(&self, gre_len: usize) -> usize {
        self.len + gre_len
    }

    /// Writes the outer headers for a GRE datagram of `gre_len` bytes to the start of `out`
    /// (at least [`Outer::len`] bytes).
    pub fn write(&mut self, gre_len: usize, out: &mut [u8]) {
        let out = &mut out[..self.len];
        out.copy_from_slice(&self.bytes[..self.len]);
        if self.is_ipv6() {
            out[V6_PAYLOAD_LEN..V6_PAYLOAD_LEN + 2]
                .copy_from_slice(&(gre_len as u16).to_be_bytes());
        } else {
            let total = (self.len - ETHERNET_HEADER_LEN + gre_len) as u16;
            let ident = self.next_ident;
            self.next_ident = ident.wrapping_add(1);
            out[V4_TOTAL_LEN..V4_TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
            out[V4_IDENT..V4_IDENT + 2].copy_from_slice(&ident.to_be_bytes());
            let sum = fold(self.base_sum + u32::from(total) + u32::from(ident));
            out[V4_CHECKSUM..V4_CHECKSUM + 2].copy_from_slice(&(!sum).to_be_bytes());
        }
    }

    /// Writes the whole frame for `kept` into `out`; returns its length, or 0 when `out` is too
    /// short.
    pub fn write_frame(&mut self, kept: &Kept<'_>, out: &mut [u8]) -> usize {
        let n = self.frame_len(kept.len());
        if n > out.len() {
            return 0;
        }
        self.write(kept.len(), out);
        kept.write_gre(&mut out[self.len..]);
        n
    }
}

/// The 20-bit IPv6 flow label of one session's stream: a hash of the addresses and the
/// session, never 0 (0 means "no label").
pub fn flow_label(spec: &OuterSpec) -> u32 {
    // FNV-1a: stable across runs and builds, which a label seen by routers should be.
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    for b in bytes(spec.src).into_iter().chain(bytes(spec.dst)) {
        eat(b);
    }
    for b in spec.session.to_be_bytes() {
        eat(b);
    }
    let label = (h ^ (h >> 20)) & 0xf_ffff;
    if label == 0 { 1 } else { label }
}

/// Ones' complement sum of 16-bit words, not folded.
fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Pipeline;
    use crate::seq::Sequence;
    use tapwire_api_types::probe::{Encapsulation, FlowSpec};
    use tapwire_formats::capture::LinkType;
    use tapwire_formats::decap::{Config, Decapsulator, Kind, Outcome};
    use tapwire_netio::ring::{Direction, Packet, VlanTag};

    const HOP: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
    const ME: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

    fn spec(src: &str, dst: &str) -> OuterSpec {
        OuterSpec {
            dst_mac: HOP,
            src_mac: ME,
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            session: 42,
        }
    }

    fn flow(encap: Encapsulation) -> FlowSpec {
        let mut f = crate::config::test_flow("f", None);
        f.encap = encap;
        f.session = 42;
        f
    }

    fn packets<'a>(small: &'a [u8], big: &'a [u8]) -> [Packet<'a>; 3] {
        let p = |data: &'a [u8], vlan| Packet {
            data,
            wire_len: data.len() as u32,
            ts_ns: 1_700_000_000_000_000_000,
            direction: Direction::Host,
            vlan,
            truncated: false,
            ifindex: 4,
        };
        [
            p(small, None),
            p(big, None),
            p(
                small,
                Some(VlanTag {
                    tci: 100,
                    tpid: 0x8100,
                }),
            ),
        ]
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    /// Frames for three packets, each decapsulated by the collector's own decoder from the
    /// Ethernet header on.
    #[test]
    fn frames_decapsulate_with_good_checksums() {
        let (small, big) = (frame(60), frame(1514));
        for (src, dst, ip_len) in [
            ("192.0.2.1", "192.0.2.9", 20),
            ("2001:db8::1", "2001:db8::9", 40),
        ] {
            for encap in [
                Encapsulation::ErspanIi,
                Encapsulation::ErspanIii,
                Encapsulation::Gre,
            ] {
                for gre_checksum in [false, true] {
                    let mut p = Pipeline::new(&flow(encap), 9000 - ip_len, ip_len);
                    p.set_gre_checksum(gre_checksum);
                    let seq = Sequence::default();
                    let kept = p.select(packets(&small, &big), &seq);
                    let mut outer = Outer::new(spec(src, dst), 0xfffe).expect("template");
                    assert_eq!(outer.len(), 14 + ip_len);
                    let mut d = Decapsulator::new(Config::default());
                    for (i, k) in kept.iter().enumerate() {
                        let mut buf = vec![0u8; 9100];
                        let n = outer.write_frame(k, &mut buf);
                        assert_eq!(n, 14 + ip_len + k.len());
                        let f = &buf[..n];
                        assert_eq!(&f[..6], &HOP);
                        assert_eq!(&f[6..12], &ME);
                        let what = format!("{src} {encap:?} csum {gre_checksum} #{i}");
                        if ip_len == 20 {
                            let ip = ipv4::Packet::new_checked(&f[14..]).expect("ipv4");
                            assert!(ip.verify_checksum(), "{what}");
                            assert!(ip.dont_frag());
                            assert_eq!(ip.ttl(), HOP_LIMIT);
                            assert_eq!(usize::from(ip.total_len()), n - 14);
                            // Counting up from the first, wrapping.
                            assert_eq!(ip.ident(), 0xfffeu16.wrapping_add(i as u16), "{what}");
                        } else {
                            let ip = ipv6::Packet::new_checked(&f[14..]).expect("ipv6");
                            assert_eq!(usize::from(ip.payload_len()), n - 54);
                            assert_eq!(ip.flow_label(), flow_label(outer.spec()));
                            assert_ne!(ip.flow_label(), 0);
                            assert_eq!(ip.hop_limit(), HOP_LIMIT);
                        }
                        let Outcome::Mirrored(m) = d.decap_link(LinkType::Ethernet, f, 0) else {
                            panic!("{what}: not decapsulated")
                        };
                        assert_eq!(m.key.src, outer.spec().src, "{what}");
                        assert_eq!(m.key.id, 42);
                        assert_eq!(m.meta.seq, Some(i as u32), "{what}");
                        let kind = match encap {
                            Encapsulation::ErspanIi => Kind::ErspanII,
                            Encapsulation::ErspanIii => Kind::ErspanIII,
                            Encapsulation::Gre => Kind::Gre,
                        };
                        assert_eq!(m.key.kind, kind);
                        let mut wire = Vec::new();
                        packets(&small, &big)[i].write_with_vlan(&mut wire);
                        assert_eq!(m.frame, wire.as_slice(), "{what}");
                        if gre_checksum {
                            let g =
                                tapwire_formats::wire::gre::Packet::new_checked(&f[14 + ip_len..])
                                    .expect("gre");
                            assert!(g.checksum_present() && g.verify_checksum(), "{what}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_short_buffer_gets_nothing() {
        let small = frame(60);
        let big = frame(1514);
        let mut p = Pipeline::new(&flow(Encapsulation::ErspanIi), 1480, 20);
        let kept = p.select(packets(&small, &big), &Sequence::default());
        let mut outer = Outer::new(spec("192.0.2.1", "192.0.2.9"), 0).expect("template");
        let mut buf = vec![0u8; 1000];
        assert_eq!(outer.write_frame(&kept[1], &mut buf), 0);
        assert!(outer.write_frame(&kept[0], &mut buf) > 0);
    }

    #[test]
    fn mixed_families_are_refused() {
        let e = Outer::new(spec("192.0.2.1", "2001:db8::9"), 0).expect_err("mixed");
        assert!(e.to_string().contains("not of one IP version"));
    }

    #[test]
    fn flow_labels_differ_by_session_and_stay_put() {
        let a = spec("2001:db8::1", "2001:db8::9");
        let b = OuterSpec { session: 43, ..a };
        assert_eq!(flow_label(&a), flow_label(&a));
        assert_ne!(flow_label(&a), flow_label(&b));
        assert!(flow_label(&a) <= 0xf_ffff);
    }
}
