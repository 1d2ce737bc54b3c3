//! From captured packets to datagrams, without IO: select each packet ([`Selector`]), number
//! the kept ones from the session's sequence, write their encapsulation headers, and describe
//! each datagram as the list of slices to send (header, then the frame straight from the ring,
//! with the VLAN tag the kernel stripped put back between the MAC addresses and the rest).
//! Nothing is copied but the header and the 4-byte tag.

use std::io::IoSlice;

use tapwire_api_types::probe::{Encapsulation, ErspanTime, FlowCounters, FlowSpec};
use tapwire_formats::encap::{
    Encap, Encapsulated, Encapsulator, FrameMeta, MAX_HEADER_LEN, TimeFormat, fill_gre_checksum,
};
use tapwire_formats::wire::erspan::{Direction as ErspanDirection, HardwareId, SessionId};
use tapwire_netio::ring::{Direction as RingDirection, Packet};

use crate::bucket::RateLimiter;
use crate::sample::Sampler;
use crate::select::{Selector, Verdict, VlanSet};
use crate::seq::Sequence;

/// Destination and source MAC addresses: a re-inserted VLAN tag goes after them.
const MAC_ADDRS_LEN: usize = 12;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;

/// One packet to send: the ring's bytes plus what goes around them.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'p> {
    data: &'p [u8],
    /// The tag to put back after the MAC addresses (TPID, TCI), when the kernel stripped one.
    tag: Option<[u8; 4]>,
    header: [u8; MAX_HEADER_LEN],
    enc: Encapsulated,
}

impl<'p> Kept<'p> {
    /// Appends the datagram's parts: the header, then the first `enc.frame_len` bytes of the
    /// frame as it was on the wire.
    pub fn push_parts<'a>(&'a self, out: &mut Vec<IoSlice<'a>>)
    where
        'p: 'a,
    {
        out.push(IoSlice::new(self.header()));
        out.extend(self.frame_parts().into_iter().flatten().map(IoSlice::new));
    }

    /// The GRE (and ERSPAN) header.
    pub fn header(&self) -> &[u8] {
        &self.header[..self.enc.header_len]
    }

    /// The frame as sent, in up to three pieces: the MAC addresses, the re-inserted tag and
    /// the rest (or the frame in one piece when no tag goes back).
    fn frame_parts(&self) -> [Option<&[u8]>; 3] {
        let len = self.enc.frame_len;
        match &self.tag {
            Some(tag) if self.data.len() >= MAC_ADDRS_LEN => [
                Some(&self.data[..MAC_ADDRS_LEN.min(len)]),
                (len > MAC_ADDRS_LEN).then(|| &tag[..(len - MAC_ADDRS_LEN).min(4)]),
                (len > MAC_ADDRS_LEN + 4).then(|| &self.data[MAC_ADDRS_LEN..len - 4]),
            ],
            _ => [Some(&self.data[..len.min(self.data.len())]), None, None],
        }
    }

    /// Copies the GRE datagram (header, then the frame) to the start of `out`, which holds at
    /// least [`Kept::len`] bytes; returns the length.
    pub fn write_gre(&self, out: &mut [u8]) -> usize {
        let mut at = 0;
        for part in std::iter::once(self.header()).chain(self.frame_parts().into_iter().flatten()) {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        at
    }

    /// Bytes of the GRE datagram (header and frame).
    pub fn len(&self) -> usize {
        self.enc.header_len + self.enc.frame_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn truncated(&self) -> bool {
        self.enc.truncated
    }
}

/// A flow's per-thread state between the ring and the socket.
#[derive(Debug, Clone)]
pub struct Pipeline {
    selector: Selector,
    encap: Encap,
    session: SessionId,
    encapsulator: Encapsulator,
    /// Largest GRE payload (path MTU less the outer IP header).
    max_payload: usize,
    ip_header_len: usize,
    snaplen: usize,
    gre_checksum: bool,
    /// Counted since the last [`Pipeline::take_counters`].
    counters: FlowCounters,
}

impl Pipeline {
    /// `threads`: the flow's capture threads; each gets an equal share of the rate limit.
    pub fn new(spec: &FlowSpec, max_payload: usize, ip_header_len: usize) -> Pipeline {
        let encap = match spec.encap {
            Encapsulation::ErspanIi => Encap::ErspanII,
            Encapsulation::ErspanIii => Encap::ErspanIII {
                hardware_id: HardwareId::try_new(spec.hardware_id).unwrap_or_default(),
                time: match spec.erspan_time {
                    ErspanTime::Nanos100 => TimeFormat::Nanos100,
                    ErspanTime::Ieee1588 => TimeFormat::Ieee1588,
                },
            },
            Encapsulation::Gre => Encap::Gre,
        };
        let session = SessionId::try_new(spec.session).unwrap_or_default();
        let threads = u64::from(spec.threads.max(1));
        let share = |r: Option<u64>| r.map(|r| r.div_ceil(threads));
        let max_packet_bits = ((ip_header_len + max_payload) * 8) as u64;
        let selector = Selector::new(
            spec.direction,
            VlanSet::new(&spec.vlans, spec.untagged),
            Sampler::new(spec.sample),
            RateLimiter::new(
                share(spec.rate_pps),
                share(spec.rate_bps),
                spec.burst_ms,
                max_packet_bits,
            ),
        );
        Pipeline {
            selector,
            encap,
            session,
            encapsulator: Encapsulator::new(encap, session, max_payload),
            max_payload,
            ip_header_len,
            snaplen: spec.snaplen.map_or(usize::MAX, |s| s as usize),
            gre_checksum: false,
            counters: FlowCounters::default(),
        }
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// After the path MTU changed.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
        self.encapsulator = Encapsulator::new(self.encap, self.session, max_payload)
            .with_gre_checksum(self.gre_checksum);
    }

    /// Every datagram carries a GRE checksum from now on.
    pub fn set_gre_checksum(&mut self, on: bool) {
        self.gre_checksum = on;
        self.set_max_payload(self.max_payload);
    }

    /// The outer IP header's length (20 or 40): what the rate limit counts besides the
    /// datagram.
    pub fn set_ip_header_len(&mut self, len: usize) {
        self.ip_header_len = len;
    }

    /// Selects from `packets`, numbers the kept ones from `seq` (one reservation for all of
    /// them, so they are consecutive) and writes their headers.
    pub fn select<'p>(
        &mut self,
        packets: impl IntoIterator<Item = Packet<'p>>,
        seq: &Sequence,
    ) -> Vec<Kept<'p>> {
        let header_len = self.encapsulator.header_len();
        let room = self.max_payload.saturating_sub(header_len);
        let mut kept: Vec<(Packet<'p>, Option<[u8; 4]>, usize, FrameMeta)> = Vec::new();
        for pkt in packets {
            let c = &mut self.counters;
            c.captured += 1;
            c.captured_bytes += u64::from(pkt.wire_len);
            let outgoing = pkt.direction == RingDirection::Outgoing;
            // The outermost tag: stripped by the kernel (received frames), or still in the frame
            // (frames this host sent through a packet socket).
            let (tag, inline) = match pkt.vlan {
                Some(t) if pkt.data.len() >= MAC_ADDRS_LEN => {
                    let mut b = [0u8; 4];
                    b[..2].copy_from_slice(&t.tpid.to_be_bytes());
                    b[2..].copy_from_slice(&t.tci.to_be_bytes());
                    (Some(b), Some(t.tci))
                }
                _ => (None, inline_tci(pkt.data)),
            };
            let full = pkt.data.len() + if tag.is_some() { 4 } else { 0 };
            let frame_len = full.min(self.snaplen);
            let sent_len = header_len + frame_len.min(room);
            let bits = ((self.ip_header_len + sent_len) * 8) as u64;
            match self
                .selector
                .decide(outgoing, inline.map(|t| t & 0x0fff), pkt.ts_ns, bits)
            {
                Verdict::Send => {}
                Verdict::FilteredOut => {
                    c.filtered_out += 1;
                    continue;
                }
                Verdict::SampledOut => {
                    c.sampled_out += 1;
                    continue;
                }
                Verdict::RateLimited => {
                    c.rate_limited += 1;
                    continue;
                }
            }
            let meta = FrameMeta {
                ts_ns: pkt.ts_ns,
                direction: if outgoing {
                    ErspanDirection::Egress
                } else {
                    ErspanDirection::Ingress
                },
                ifindex: pkt.ifindex,
                cos: inline.map(|t| (t >> 13) as u8),
                vlan: inline.map(|t| t & 0x0fff),
                cut: pkt.truncated || frame_len < full,
            };
            kept.push((pkt, tag, frame_len, meta));
        }
        let first = seq.reserve(kept.len() as u32);
        kept.into_iter()
            .enumerate()
            .map(|(i, (pkt, tag, frame_len, meta))| {
                let mut header = [0u8; MAX_HEADER_LEN];
                let enc = self.encapsulator.header(
                    first.wrapping_add(i as u32),
                    frame_len,
                    &meta,
                    &mut header,
                );
                let mut k = Kept {
                    data: pkt.data,
                    tag,
                    header,
                    enc,
                };
                if self.gre_checksum {
                    let parts = k.frame_parts();
                    fill_gre_checksum(&mut header[..enc.header_len], parts.into_iter().flatten());
                    k.header = header;
                }
                k
            })
            .collect()
    }

    /// Counts what the socket did with `kept[..n_sent]`.
    pub fn count_sent(&mut self, kept: &[Kept<'_>]) {
        for k in kept {
            self.counters.sent += 1;
            self.counters.sent_bytes += k.len() as u64;
            self.counters.truncated += u64::from(k.truncated());
        }
    }

    pub fn count_send_error(&mut self) {
        self.counters.send_errors += 1;
    }

    /// The counts since the last call.
    pub fn take_counters(&mut self) -> FlowCounters {
        std::mem::take(&mut self.counters)
    }
}

/// The TCI of an 802.1Q/802.1ad tag still inside the frame.
fn inline_tci(frame: &[u8]) -> Option<u16> {
    let tpid = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if tpid == TPID_8021Q || tpid == TPID_8021AD {
        Some(u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_formats::decap::{Kind, Outcome, decap_gre};
    use tapwire_netio::ring::VlanTag;

    fn spec(encap: Encapsulation) -> FlowSpec {
        tapwire_api_types::probe::FlowSpec {
            name: "t".into(),
            interface: "veth0".into(),
            direction: tapwire_api_types::probe::Direction::Both,
            vlans: vec![],
            untagged: false,
            filter: None,
            snaplen: None,
            sample: 1,
            rate_pps: None,
            rate_bps: None,
            burst_ms: 100,
            session: 42,
            collector: "192.0.2.9".parse().expect("addr"),
            encap,
            hardware_id: 3,
            erspan_time: ErspanTime::Nanos100,
            promiscuous: false,
            threads: 1,
            block_size_bytes: 1 << 20,
            block_count: 4,
            block_timeout_ms: 10,
            mtu: None,
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
        f[12] = 0x08;
        f[13] = 0x00;
        f
    }

    fn packet(data: &[u8], direction: RingDirection, vlan: Option<VlanTag>) -> Packet<'_> {
        Packet {
            data,
            wire_len: (data.len() + if vlan.is_some() { 4 } else { 0 }) as u32,
            ts_ns: 1_700_000_000_000_000_000,
            direction,
            vlan,
            truncated: false,
            ifindex: 9,
        }
    }

    /// The datagram as the kernel would gather it.
    fn datagram(k: &Kept<'_>) -> Vec<u8> {
        let mut iov = Vec::new();
        k.push_parts(&mut iov);
        iov.iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn wire(p: &Packet<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        p.write_with_vlan(&mut v);
        v
    }

    #[test]
    fn frames_round_trip_through_the_collectors_decap() {
        let f1 = frame(60);
        let f2 = frame(1514);
        let tag = VlanTag {
            tci: (5 << 13) | 100,
            tpid: 0x8100,
        };
        let packets = [
            packet(&f1, RingDirection::Host, None),
            packet(&f2, RingDirection::Outgoing, None),
            packet(&f1, RingDirection::OtherHost, Some(tag)),
        ];
        for encap in [
            Encapsulation::ErspanIi,
            Encapsulation::ErspanIii,
            Encapsulation::Gre,
        ] {
            let mut p = Pipeline::new(&spec(encap), 9000 - 20, 20);
            let seq = Sequence::default();
            seq.reserve(7);
            let kept = p.select(packets, &seq);
            assert_eq!(kept.len(), 3);
            p.count_sent(&kept);
            for (i, (k, pkt)) in kept.iter().zip(&packets).enumerate() {
                let bytes = datagram(k);
                assert_eq!(bytes.len(), k.len());
                let Outcome::Mirrored(m) = decap_gre([192, 0, 2, 1].into(), &bytes) else {
                    panic!("{encap:?} #{i} does not decapsulate")
                };
                assert_eq!(
                    m.frame,
                    wire(pkt).as_slice(),
                    "{encap:?} #{i}: the wire frame"
                );
                assert_eq!(m.key.id, 42);
                assert_eq!(m.meta.seq, Some(7 + i as u32), "{encap:?} #{i}");
                assert!(!m.meta.truncated);
                let egress = pkt.direction == RingDirection::Outgoing;
                match encap {
                    Encapsulation::ErspanIi => {
                        assert_eq!(m.key.kind, Kind::ErspanII);
                        assert_eq!(m.meta.index, Some(9 << 1 | u32::from(egress)));
                    }
                    Encapsulation::ErspanIii => {
                        assert_eq!(m.key.kind, Kind::ErspanIII);
                        let d = if egress {
                            ErspanDirection::Egress
                        } else {
                            ErspanDirection::Ingress
                        };
                        assert_eq!(m.meta.direction, Some(d));
                        assert_eq!(m.meta.hardware_id, Some(3));
                        assert_eq!(m.meta.erspan_time_ns, Some(pkt.ts_ns));
                    }
                    Encapsulation::Gre => assert_eq!(m.key.kind, Kind::Gre),
                }
            }
            assert_eq!(seq.peek(), 10);
            let c = p.take_counters();
            assert_eq!((c.captured, c.sent, c.truncated), (3, 3, 0));
            assert_eq!(c.captured_bytes, 60 + 1514 + 64);
            assert_eq!(c.sent_bytes, bytes_of(&kept));
            assert_eq!(p.take_counters(), FlowCounters::default(), "taken");
        }
    }

    fn bytes_of(kept: &[Kept<'_>]) -> u64 {
        kept.iter().map(|k| k.len() as u64).sum()
    }

    #[test]
    fn snaplen_and_path_mtu_cut_with_the_t_bit() {
        let big = frame(1514);
        let tag = VlanTag {
            tci: 100,
            tpid: 0x8100,
        };
        // Snaplen 14 on a tagged frame: MAC addresses and the first 2 bytes of the tag.
        let mut s = spec(Encapsulation::ErspanIi);
        s.snaplen = Some(14);
        let mut p = Pipeline::new(&s, 1480, 20);
        let pkts = [packet(&big, RingDirection::Host, Some(tag))];
        let kept = p.select(pkts, &Sequence::default());
        let bytes = datagram(&kept[0]);
        let Outcome::Mirrored(m) = decap_gre([192, 0, 2, 1].into(), &bytes) else {
            panic!()
        };
        assert!(m.meta.truncated);
        assert_eq!(m.frame, &wire(&pkts[0])[..14]);

        // Path MTU 1500 (payload 1480): the 1514-byte frame is cut to 1480 - 16.
        let mut p = Pipeline::new(&spec(Encapsulation::ErspanIi), 1480, 20);
        let kept = p.select(
            [packet(&big, RingDirection::Host, None)],
            &Sequence::default(),
        );
        assert_eq!(kept[0].len(), 1480);
        assert!(kept[0].truncated());
        p.count_sent(&kept);
        assert_eq!(p.take_counters().truncated, 1);
        // A smaller MTU learnt later applies from then on.
        p.set_max_payload(1000);
        let kept = p.select(
            [packet(&big, RingDirection::Host, None)],
            &Sequence::default(),
        );
        assert_eq!(kept[0].len(), 1000);
    }

    #[test]
    fn selection_counts_each_refusal() {
        let f = frame(100);
        let mut s = spec(Encapsulation::Gre);
        s.direction = tapwire_api_types::probe::Direction::In;
        s.vlans = vec![10];
        s.untagged = true;
        s.sample = 2;
        let mut p = Pipeline::new(&s, 1480, 20);
        let mut pkts = vec![packet(&f, RingDirection::Outgoing, None)];
        let tag11 = VlanTag {
            tci: 11,
            tpid: 0x8100,
        };
        pkts.push(packet(&f, RingDirection::Host, Some(tag11)));
        for _ in 0..10 {
            pkts.push(packet(&f, RingDirection::Host, None));
        }
        let seq = Sequence::default();
        let kept = p.select(pkts, &seq);
        assert_eq!(kept.len(), 5);
        assert_eq!(seq.peek(), 5, "only kept packets are numbered");
        let c = p.take_counters();
        assert_eq!((c.captured, c.filtered_out, c.sampled_out), (12, 2, 5));
    }

    #[test]
    fn inline_tags_are_read_for_vlan_selection_and_the_header() {
        let mut f = frame(64);
        f[12..16].copy_from_slice(&[0x81, 0x00, 0xa0, 0x07]);
        let mut s = spec(Encapsulation::ErspanIi);
        s.vlans = vec![7];
        let mut p = Pipeline::new(&s, 1480, 20);
        let kept = p.select(
            [packet(&f, RingDirection::Outgoing, None)],
            &Sequence::default(),
        );
        let bytes = datagram(&kept[0]);
        let Outcome::Mirrored(m) = decap_gre([192, 0, 2, 1].into(), &bytes) else {
            panic!()
        };
        assert_eq!(m.frame, f.as_slice(), "the frame is sent as it is");
        assert_eq!(m.meta.cos, Some(5));
        assert_eq!(inline_tci(&f[..15]), None);
    }
}
