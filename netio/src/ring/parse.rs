//! Reading TPACKET_V3 blocks from plain bytes, with every kernel offset bounds-checked.
//!
//! ```text
//! block:  tpacket_block_desc (48 B) | [private area] | packet | packet | ...   (blk_len used)
//! packet: tpacket3_hdr (48 B) | sockaddr_ll (20 B) | pad | frame at tp_mac (tp_snaplen B) | pad
//!         the next packet starts tp_next_offset bytes after this one's header
//! ```
//! All fields are in host byte order except `sll_protocol`.

use std::cell::Cell;
use std::mem::{offset_of, size_of};

/// Byte offsets in `tpacket_block_desc` and `tpacket3_hdr`, checked against `libc`'s layout.
mod field {
    pub const BLOCK_STATUS: usize = 8;
    pub const NUM_PKTS: usize = 12;
    pub const OFFSET_TO_FIRST_PKT: usize = 16;
    pub const BLK_LEN: usize = 20;
    pub const SEQ_NUM: usize = 24;
    pub const BLOCK_DESC_LEN: usize = 48;

    pub const NEXT_OFFSET: usize = 0;
    pub const SEC: usize = 4;
    pub const NSEC: usize = 8;
    pub const SNAPLEN: usize = 12;
    pub const LEN: usize = 16;
    pub const STATUS: usize = 20;
    pub const MAC: usize = 24;
    pub const VLAN_TCI: usize = 32;
    pub const VLAN_TPID: usize = 36;
    /// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`: where the kernel puts the `sockaddr_ll`.
    pub const SLL: usize = 48;
    pub const SLL_IFINDEX: usize = SLL + 4;
    pub const SLL_PKTTYPE: usize = SLL + 10;
    /// Header plus `sockaddr_ll`: nothing shorter is a packet.
    pub const PACKET_HEADER_LEN: usize = SLL + 20;
}

const _: () = {
    use libc::{sockaddr_ll, tpacket_block_desc, tpacket_hdr_v1, tpacket3_hdr};
    let bh1 = offset_of!(tpacket_block_desc, hdr);
    assert!(bh1 + offset_of!(tpacket_hdr_v1, block_status) == field::BLOCK_STATUS);
    assert!(bh1 + offset_of!(tpacket_hdr_v1, num_pkts) == field::NUM_PKTS);
    assert!(bh1 + offset_of!(tpacket_hdr_v1, offset_to_first_pkt) == field::OFFSET_TO_FIRST_PKT);
    assert!(bh1 + offset_of!(tpacket_hdr_v1, blk_len) == field::BLK_LEN);
    assert!(bh1 + offset_of!(tpacket_hdr_v1, seq_num) == field::SEQ_NUM);
    assert!(size_of::<tpacket_block_desc>() == field::BLOCK_DESC_LEN);
    assert!(offset_of!(tpacket3_hdr, tp_next_offset) == field::NEXT_OFFSET);
    assert!(offset_of!(tpacket3_hdr, tp_sec) == field::SEC);
    assert!(offset_of!(tpacket3_hdr, tp_nsec) == field::NSEC);
    assert!(offset_of!(tpacket3_hdr, tp_snaplen) == field::SNAPLEN);
    assert!(offset_of!(tpacket3_hdr, tp_len) == field::LEN);
    assert!(offset_of!(tpacket3_hdr, tp_status) == field::STATUS);
    assert!(offset_of!(tpacket3_hdr, tp_mac) == field::MAC);
    assert!(offset_of!(tpacket3_hdr, hv1.tp_vlan_tci) == field::VLAN_TCI);
    assert!(offset_of!(tpacket3_hdr, hv1.tp_vlan_tpid) == field::VLAN_TPID);
    assert!(size_of::<tpacket3_hdr>().next_multiple_of(libc::TPACKET_ALIGNMENT) == field::SLL);
    assert!(field::SLL + offset_of!(sockaddr_ll, sll_ifindex) == field::SLL_IFINDEX);
    assert!(field::SLL + offset_of!(sockaddr_ll, sll_pkttype) == field::SLL_PKTTYPE);
    assert!(field::SLL + size_of::<sockaddr_ll>() == field::PACKET_HEADER_LEN);
};

pub(crate) const BLOCK_DESC_LEN: usize = field::BLOCK_DESC_LEN;
pub(crate) const BLOCK_STATUS_OFFSET: usize = field::BLOCK_STATUS;
/// The smallest frame size the kernel accepts for TPACKET_V3 (`tp_hdrlen`).
pub(crate) const PACKET_HEADER_LEN: usize = field::PACKET_HEADER_LEN;

const ETHER_ADDRS_LEN: usize = 12;
const TPID_8021Q: u16 = 0x8100;

fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ne64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Where a packet was going relative to this host (`sll_pkttype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// Addressed to this host.
    Host,
    /// Addressed to a broadcast address.
    Broadcast,
    /// Addressed to a multicast group.
    Multicast,
    /// Addressed to another host; seen because the interface is promiscuous (or is a veth or
    /// bridge port that hands everything up).
    OtherHost,
    /// Sent by this host.
    Outgoing,
    /// Multicast looped back to this host.
    Loopback,
    /// Any other value, kept.
    Unknown(u8),
}

impl From<u8> for Direction {
    fn from(v: u8) -> Self {
        match v {
            libc::PACKET_HOST => Direction::Host,
            libc::PACKET_BROADCAST => Direction::Broadcast,
            libc::PACKET_MULTICAST => Direction::Multicast,
            libc::PACKET_OTHERHOST => Direction::OtherHost,
            libc::PACKET_OUTGOING => Direction::Outgoing,
            libc::PACKET_LOOPBACK => Direction::Loopback,
            other => Direction::Unknown(other),
        }
    }
}

impl Direction {
    /// True for packets this host received, whatever their destination.
    pub fn is_incoming(self) -> bool {
        !matches!(self, Direction::Outgoing | Direction::Unknown(_))
    }
}

/// A VLAN tag the kernel took out of the frame and reported beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// Tag control information: PCP (3 bits), DEI (1), VLAN id (12).
    pub tci: u16,
    /// 0x8100 (802.1Q) or 0x88a8 (802.1ad); 0x8100 when the kernel did not say.
    pub tpid: u16,
}

impl VlanTag {
    /// The VLAN id (12 bits).
    pub fn vid(self) -> u16 {
        self.tci & 0x0fff
    }

    /// The priority code point (3 bits).
    pub fn pcp(self) -> u8 {
        (self.tci >> 13) as u8
    }

    /// The drop eligible indicator.
    pub fn dei(self) -> bool {
        self.tci & 0x1000 != 0
    }
}

/// One captured packet, borrowed from a ring block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The captured bytes from the Ethernet header on (`tp_snaplen` bytes at `tp_mac`), without
    /// the VLAN tag in [`Packet::vlan`] if the kernel stripped one.
    pub data: &'a [u8],
    /// The frame's length on the wire: `tp_len`, plus 4 when the kernel stripped a VLAN tag into
    /// [`Packet::vlan`]. Equals the length [`Packet::write_with_vlan`] writes when not truncated.
    pub wire_len: u32,
    /// Receive time in nanoseconds since the Unix epoch (`tp_sec`, `tp_nsec`).
    pub ts_ns: u64,
    /// Where it was going relative to this host.
    pub direction: Direction,
    /// The outermost VLAN tag, when the kernel moved it out of the frame (`TP_STATUS_VLAN_VALID`).
    pub vlan: Option<VlanTag>,
    /// Fewer bytes were captured than the frame had (snaplen, or `TP_STATUS_COPY`).
    pub truncated: bool,
    /// The interface the packet was seen on (`sll_ifindex`).
    pub ifindex: u32,
}

impl Packet<'_> {
    /// Appends the frame to `out` as it was on the wire: with the stripped VLAN tag put back
    /// after the two MAC addresses. Without a stripped tag it appends [`Packet::data`] as is.
    /// A capture shorter than the MAC addresses is a prefix of the wire frame already.
    pub fn write_with_vlan(&self, out: &mut Vec<u8>) {
        match self.vlan {
            Some(tag) if self.data.len() >= ETHER_ADDRS_LEN => {
                out.reserve(self.data.len() + 4);
                out.extend_from_slice(&self.data[..ETHER_ADDRS_LEN]);
                out.extend_from_slice(&tag.tpid.to_be_bytes());
                out.extend_from_slice(&tag.tci.to_be_bytes());
                out.extend_from_slice(&self.data[ETHER_ADDRS_LEN..]);
            }
            _ => out.extend_from_slice(self.data),
        }
    }
}

/// The header fields of a block the user owns, read once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockHeader {
    pub status: u32,
    pub num_pkts: u32,
    pub seq_num: u64,
    first_pkt: usize,
    /// End of the used part of the block: packets must lie before it.
    end: usize,
}

impl BlockHeader {
    /// Reads and checks a block descriptor. `None` means a corrupt descriptor: an
    /// `offset_to_first_pkt` or `blk_len` outside the block.
    pub fn parse(block: &[u8]) -> Option<BlockHeader> {
        if block.len() < BLOCK_DESC_LEN {
            return None;
        }
        let num_pkts = ne32(block, field::NUM_PKTS);
        let first_pkt = ne32(block, field::OFFSET_TO_FIRST_PKT) as usize;
        let end = ne32(block, field::BLK_LEN) as usize;
        if end > block.len() {
            return None;
        }
        if num_pkts > 0 && (first_pkt < BLOCK_DESC_LEN || first_pkt > end) {
            return None;
        }
        Some(BlockHeader {
            status: ne32(block, field::BLOCK_STATUS),
            num_pkts,
            seq_num: ne64(block, field::SEQ_NUM),
            first_pkt,
            end,
        })
    }
}

/// Iterates the packets of one block. Stops at the first header that does not fit and sets
/// `corrupt`; never reads outside `block[..blk_len]`.
#[derive(Debug)]
pub struct Packets<'a> {
    block: &'a [u8],
    offset: usize,
    remaining: u32,
    corrupt: &'a Cell<bool>,
}

impl<'a> Packets<'a> {
    /// `header` must come from [`BlockHeader::parse`] of the same `block`; `None` yields no
    /// packets and marks the block corrupt.
    pub(crate) fn new(
        block: &'a [u8],
        header: Option<BlockHeader>,
        corrupt: &'a Cell<bool>,
    ) -> Self {
        match header {
            Some(h) => Packets {
                block: &block[..h.end],
                offset: h.first_pkt,
                remaining: h.num_pkts,
                corrupt,
            },
            None => {
                corrupt.set(true);
                Packets {
                    block: &[],
                    offset: 0,
                    remaining: 0,
                    corrupt,
                }
            }
        }
    }

    fn fail(&mut self) -> Option<Packet<'a>> {
        self.remaining = 0;
        self.corrupt.set(true);
        None
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = Packet<'a>;

    fn next(&mut self) -> Option<Packet<'a>> {
        if self.remaining == 0 {
            return None;
        }
        let block = self.block;
        let at = self.offset;
        let Some(hdr) = at
            .checked_add(field::PACKET_HEADER_LEN)
            .and_then(|end| block.get(at..end))
        else {
            return self.fail();
        };
        let mac = usize::from(ne16(hdr, field::MAC));
        let snaplen = ne32(hdr, field::SNAPLEN) as usize;
        if mac < field::PACKET_HEADER_LEN {
            return self.fail();
        }
        let data_start = at + mac;
        let Some(data) = data_start
            .checked_add(snaplen)
            .and_then(|end| block.get(data_start..end))
        else {
            return self.fail();
        };
        self.remaining -= 1;
        if self.remaining > 0 {
            // The next header must start past this packet's data, which also rules out loops.
            let next = ne32(hdr, field::NEXT_OFFSET) as usize;
            if next < mac + snaplen {
                self.remaining = 0;
                self.corrupt.set(true);
            }
            self.offset = at + next;
        }

        let status = ne32(hdr, field::STATUS);
        let len = ne32(hdr, field::LEN);
        let vlan = (status & libc::TP_STATUS_VLAN_VALID != 0).then(|| VlanTag {
            tci: ne32(hdr, field::VLAN_TCI) as u16,
            tpid: if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                ne16(hdr, field::VLAN_TPID)
            } else {
                TPID_8021Q
            },
        });
        let ts_ns =
            u64::from(ne32(hdr, field::SEC)) * 1_000_000_000 + u64::from(ne32(hdr, field::NSEC));
        Some(Packet {
            data,
            wire_len: len.saturating_add(if vlan.is_some() { 4 } else { 0 }),
            ts_ns,
            direction: Direction::from(hdr[field::SLL_PKTTYPE]),
            vlan,
            truncated: status & libc::TP_STATUS_COPY != 0 || (snaplen as u64) < u64::from(len),
            ifindex: ne32(hdr, field::SLL_IFINDEX),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: usize = 48;

    struct Pkt {
        next: u32,
        sec: u32,
        nsec: u32,
        snaplen: u32,
        len: u32,
        status: u32,
        mac: u16,
        tci: u32,
        tpid: u16,
        pkttype: u8,
        ifindex: u32,
    }

    fn pkt(snaplen: u32) -> Pkt {
        Pkt {
            next: 0,
            sec: 1_700_000_000,
            nsec: 123_456_789,
            snaplen,
            len: snaplen,
            status: libc::TP_STATUS_USER,
            mac: 80,
            tci: 0,
            tpid: 0,
            pkttype: libc::PACKET_HOST,
            ifindex: 7,
        }
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }

    /// Lays packets out the way the kernel does, each 16-byte aligned, and fills their frames
    /// with their index.
    fn block(size: usize, pkts: &mut [Pkt]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        put32(&mut b, field::BLOCK_STATUS, libc::TP_STATUS_USER);
        put32(&mut b, field::NUM_PKTS, pkts.len() as u32);
        put32(&mut b, field::OFFSET_TO_FIRST_PKT, FIRST as u32);
        let mut at = FIRST;
        let n = pkts.len();
        for (i, p) in pkts.iter_mut().enumerate() {
            if at + field::PACKET_HEADER_LEN > size {
                break;
            }
            let total = (usize::from(p.mac) + p.snaplen as usize).next_multiple_of(16);
            if p.next == 0 && i + 1 < n {
                p.next = total as u32;
            }
            put32(&mut b, at + field::NEXT_OFFSET, p.next);
            put32(&mut b, at + field::SEC, p.sec);
            put32(&mut b, at + field::NSEC, p.nsec);
            put32(&mut b, at + field::SNAPLEN, p.snaplen);
            put32(&mut b, at + field::LEN, p.len);
            put32(&mut b, at + field::STATUS, p.status);
            put16(&mut b, at + field::MAC, p.mac);
            put32(&mut b, at + field::VLAN_TCI, p.tci);
            put16(&mut b, at + field::VLAN_TPID, p.tpid);
            put32(&mut b, at + field::SLL_IFINDEX, p.ifindex);
            b[at + field::SLL_PKTTYPE] = p.pkttype;
            let data = at + usize::from(p.mac);
            let end = (data + p.snaplen as usize).min(size);
            b[data.min(size)..end].fill(i as u8 + 1);
            at += total;
        }
        put32(&mut b, field::BLK_LEN, at.min(size) as u32);
        b
    }

    fn collect(b: &[u8]) -> (Vec<Packet<'_>>, bool) {
        let corrupt = Box::leak(Box::new(Cell::new(false)));
        let pkts: Vec<_> = Packets::new(b, BlockHeader::parse(b), corrupt).collect();
        (pkts, corrupt.get())
    }

    #[test]
    fn reads_every_packet_of_a_good_block() {
        let mut ps = [pkt(60), pkt(1514), pkt(42)];
        ps[1].pkttype = libc::PACKET_OUTGOING;
        ps[2].len = 100;
        let b = block(4096, &mut ps);
        let (got, corrupt) = collect(&b);
        assert!(!corrupt);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].data, &[1u8; 60][..]);
        assert_eq!(got[1].data.len(), 1514);
        assert!(got[1].data.iter().all(|&x| x == 2));
        assert_eq!(got[1].direction, Direction::Outgoing);
        assert_eq!(got[0].direction, Direction::Host);
        assert_eq!(got[0].ts_ns, 1_700_000_000_123_456_789);
        assert_eq!(got[0].ifindex, 7);
        assert_eq!(got[0].wire_len, 60);
        assert!(!got[0].truncated);
        assert!(got[2].truncated);
        assert_eq!(got[2].wire_len, 100);
    }

    #[test]
    fn copy_status_means_truncated() {
        let mut ps = [pkt(60)];
        ps[0].status |= libc::TP_STATUS_COPY;
        let b = block(4096, &mut ps);
        assert!(collect(&b).0[0].truncated);
    }

    #[test]
    fn empty_block_is_fine() {
        let b = block(4096, &mut []);
        let (got, corrupt) = collect(&b);
        assert!(got.is_empty());
        assert!(!corrupt);
    }

    #[test]
    fn blk_len_past_the_block_is_corrupt() {
        let mut b = block(4096, &mut [pkt(60)]);
        put32(&mut b, field::BLK_LEN, 4097);
        let (got, corrupt) = collect(&b);
        assert!(got.is_empty());
        assert!(corrupt);
    }

    #[test]
    fn first_packet_inside_the_descriptor_is_corrupt() {
        let mut b = block(4096, &mut [pkt(60)]);
        put32(&mut b, field::OFFSET_TO_FIRST_PKT, 8);
        assert!(collect(&b).1);
        put32(&mut b, field::OFFSET_TO_FIRST_PKT, 5000);
        assert!(collect(&b).1);
    }

    #[test]
    fn snaplen_past_blk_len_ends_the_block() {
        let mut ps = [pkt(60), pkt(60), pkt(60)];
        ps[1].snaplen = 4000;
        let b = block(4096, &mut ps);
        let (got, corrupt) = collect(&b);
        assert_eq!(got.len(), 1, "only the packet before the bad one");
        assert!(corrupt);
    }

    #[test]
    fn huge_snaplen_does_not_overflow() {
        let mut b = block(4096, &mut []);
        // Write the header by hand: block() would try to fill 4 GiB.
        put32(&mut b, field::NUM_PKTS, 1);
        put32(&mut b, FIRST + field::SNAPLEN, u32::MAX);
        put16(&mut b, FIRST + field::MAC, u16::MAX);
        put32(&mut b, field::BLK_LEN, 4096);
        let (got, corrupt) = collect(&b);
        assert!(got.is_empty());
        assert!(corrupt);
    }

    #[test]
    fn mac_inside_the_header_is_corrupt() {
        let mut ps = [pkt(60)];
        ps[0].mac = 20;
        let b = block(4096, &mut ps);
        let (got, corrupt) = collect(&b);
        assert!(got.is_empty());
        assert!(corrupt);
    }

    #[test]
    fn header_past_the_end_is_corrupt() {
        let mut ps = [pkt(60), pkt(60)];
        ps[0].next = 4080;
        let b = block(4096, &mut ps);
        let (got, corrupt) = collect(&b);
        assert_eq!(got.len(), 1);
        assert!(corrupt);
    }

    #[test]
    fn backward_or_overlapping_next_offset_is_corrupt() {
        for next in [0, 16, 80] {
            let mut ps = [pkt(60), pkt(60), pkt(60)];
            ps[0].next = next;
            // `block` only fills `next` when it is 0; force it after layout.
            let mut b = block(4096, &mut ps);
            put32(&mut b, FIRST + field::NEXT_OFFSET, next);
            let (got, corrupt) = collect(&b);
            assert_eq!(got.len(), 1, "next = {next}");
            assert!(corrupt, "next = {next}");
        }
    }

    #[test]
    fn num_pkts_larger_than_the_chain_is_corrupt() {
        let mut b = block(4096, &mut [pkt(60), pkt(60)]);
        put32(&mut b, field::NUM_PKTS, 1000);
        let (got, corrupt) = collect(&b);
        assert_eq!(got.len(), 2, "stops where the chain ends");
        assert!(corrupt);
    }

    #[test]
    fn short_block_is_corrupt() {
        let (got, corrupt) = collect(&[0u8; 20]);
        assert!(got.is_empty());
        assert!(corrupt);
    }

    fn frame(tagged_with: &[u8]) -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 0x02, // dst
            0x02, 0, 0, 0, 0, 0x01, // src
        ];
        f.extend_from_slice(tagged_with);
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 20]);
        f
    }

    #[test]
    fn vlan_is_reported_and_reinserted() {
        let wire = frame(&[0x81, 0x00, 0x20, 0x64]);
        let stripped = frame(&[]);
        let mut ps = [pkt(stripped.len() as u32)];
        ps[0].status |= libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
        ps[0].tci = 0x2064;
        ps[0].tpid = 0x8100;
        let mut b = block(4096, &mut ps);
        let at = FIRST + 80;
        b[at..at + stripped.len()].copy_from_slice(&stripped);
        let (got, _) = collect(&b);
        let p = got[0];
        let tag = p.vlan.expect("tag");
        assert_eq!((tag.vid(), tag.pcp(), tag.dei()), (100, 1, false));
        assert_eq!(p.wire_len as usize, wire.len());
        let mut out = vec![0xee];
        p.write_with_vlan(&mut out);
        assert_eq!(out[0], 0xee, "appends");
        assert_eq!(&out[1..], &wire[..]);
    }

    #[test]
    fn qinq_outer_tag_keeps_its_tpid() {
        let inner = [0x81, 0x00, 0x00, 0x0a];
        let mut wire_tags = vec![0x88, 0xa8, 0xe0, 0xc8];
        wire_tags.extend_from_slice(&inner);
        let wire = frame(&wire_tags);
        let stripped = frame(&inner);
        let p = Packet {
            data: &stripped,
            wire_len: wire.len() as u32,
            ts_ns: 0,
            direction: Direction::Host,
            vlan: Some(VlanTag {
                tci: 0xe0c8,
                tpid: 0x88a8,
            }),
            truncated: false,
            ifindex: 1,
        };
        let mut out = Vec::new();
        p.write_with_vlan(&mut out);
        assert_eq!(out, wire);
    }

    #[test]
    fn vlan_valid_without_tpid_defaults_to_8021q() {
        let mut ps = [pkt(60)];
        ps[0].status |= libc::TP_STATUS_VLAN_VALID;
        ps[0].tci = 5;
        ps[0].tpid = 0x1234;
        let b = block(4096, &mut ps);
        assert_eq!(
            collect(&b).0[0].vlan,
            Some(VlanTag {
                tci: 5,
                tpid: 0x8100
            })
        );
    }

    #[test]
    fn untagged_and_tiny_frames_are_copied_as_is() {
        let data = [1u8, 2, 3, 4, 5];
        let mut p = Packet {
            data: &data,
            wire_len: 5,
            ts_ns: 0,
            direction: Direction::Outgoing,
            vlan: None,
            truncated: false,
            ifindex: 1,
        };
        let mut out = Vec::new();
        p.write_with_vlan(&mut out);
        assert_eq!(out, data);
        p.vlan = Some(VlanTag {
            tci: 1,
            tpid: 0x8100,
        });
        out.clear();
        p.write_with_vlan(&mut out);
        assert_eq!(
            out, data,
            "shorter than the MAC addresses: already a wire prefix"
        );
    }

    #[test]
    fn directions_map_and_keep_unknown_values() {
        assert_eq!(Direction::from(4), Direction::Outgoing);
        assert_eq!(Direction::from(3), Direction::OtherHost);
        assert_eq!(Direction::from(9), Direction::Unknown(9));
        assert!(Direction::Broadcast.is_incoming());
        assert!(!Direction::Outgoing.is_incoming());
    }
}
