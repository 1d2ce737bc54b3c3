//! Decapsulation plus demultiplexing plus accounting: what every input (capture files, raw
//! sockets, UDP sockets, AF_PACKET) feeds, and what every output (files, TAP) is fed from.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tapwire_formats::capture::LinkType;
use tapwire_formats::decap::{self, Config, Decapsulator, Meta, NotMirror, Outcome, SourceKey};
use tapwire_formats::wire::Reason;

use crate::demux::{Demux, SeqEvent, SourceId};

/// Default bound on distinct sources: enough for any real deployment, small enough that a
/// flood of spoofed outer addresses cannot exhaust memory.
pub const MAX_SOURCES: usize = 65_536;

/// Packet counts by outcome, for the whole pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets_read: u64,
    pub decapsulated: u64,
    /// Outer fragments waiting for the rest of their datagram.
    pub held_fragments: u64,
    pub not_mirror: BTreeMap<NotMirror, u64>,
    pub malformed: BTreeMap<Reason, u64>,
    /// Packets of new sources refused because the source table was full.
    pub source_table_full: u64,
}

/// A mirrored frame, demultiplexed and accounted, ready for the outputs.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub source: SourceId,
    pub key: SourceKey,
    /// The first packet of a source not seen before.
    pub new_source: bool,
    pub frame: &'a [u8],
    pub link: LinkType,
    pub meta: Meta,
    pub seq_event: Option<SeqEvent>,
}

impl Delivery<'_> {
    /// Whether [`Delivery::comment`] has anything to say.
    #[inline]
    pub fn has_comment(&self) -> bool {
        self.seq_event.is_some() || self.meta.truncated || self.meta.gre_checksum_bad
    }

    /// The capture-file comment this packet deserves: a sequence gap or restart before it,
    /// the sender's truncation, a GRE checksum that did not verify. Appends to `out`; nothing
    /// for an ordinary packet.
    pub fn comment(&self, out: &mut String) {
        if let Some(ev) = self.seq_event {
            out.push_str(&ev.comment());
        }
        let notes = [
            (
                self.meta.truncated,
                "tapwire: truncated by the sender (ERSPAN T bit)",
            ),
            (
                self.meta.gre_checksum_bad,
                "tapwire: GRE checksum does not verify (frame kept as received)",
            ),
        ];
        for (_, note) in notes.iter().filter(|(on, _)| *on) {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(note);
        }
    }
}

#[derive(Debug)]
pub struct Pipeline {
    decap: Decapsulator,
    ports: decap::Ports,
    demux: Demux,
    totals: Totals,
}

impl Pipeline {
    pub fn new(config: Config, max_sources: usize) -> Self {
        let ports = config.ports.clone();
        Pipeline {
            decap: Decapsulator::new(config),
            ports,
            demux: Demux::new(max_sources),
            totals: Totals::default(),
        }
    }

    pub fn demux(&self) -> &Demux {
        &self.demux
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn defrag_stats(&self) -> tapwire_formats::defrag::Stats {
        self.decap.defrag_stats()
    }

    pub fn pending_datagrams(&self) -> usize {
        self.decap.pending_datagrams()
    }

    /// Drops incomplete outer datagrams older than the reassembly timeout.
    pub fn expire(&mut self, now_ns: u64) {
        self.decap.expire(now_ns);
    }

    /// A link-layer frame from a capture file or an AF_PACKET ring.
    #[inline]
    pub fn link<'a>(
        &'a mut self,
        link: LinkType,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_link(link, data, ts_ns);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// An IP datagram from a raw IPv4 socket.
    pub fn ip<'a>(&'a mut self, data: &'a [u8], ts_ns: u64) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_ip(data, ts_ns);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// A GRE packet from a raw IPv6 socket, sent by `src`.
    pub fn gre<'a>(&'a mut self, src: IpAddr, data: &'a [u8], ts_ns: u64) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_gre(src, data);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// A UDP payload sent by `src` to `dst_port`.
    pub fn udp<'a>(
        &'a mut self,
        src: IpAddr,
        dst_port: u16,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = decap::decap_udp(&self.ports, src, dst_port, data);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// The source key of an id handed out in a [`Delivery`].
    pub fn key(&self, id: SourceId) -> SourceKey {
        self.demux.source(id).key
    }
}

#[inline]
fn account<'a>(
    demux: &mut Demux,
    totals: &mut Totals,
    outcome: Outcome<'a>,
    ts_ns: u64,
) -> Option<Delivery<'a>> {
    let m = match outcome {
        Outcome::Mirrored(m) => m,
        Outcome::NotMirror(kind) => {
            *totals.not_mirror.entry(kind).or_default() += 1;
            return None;
        }
        Outcome::Malformed(reason) => {
            *totals.malformed.entry(reason).or_default() += 1;
            return None;
        }
        Outcome::Held => {
            totals.held_fragments += 1;
            return None;
        }
    };
    let Ok((source, new_source)) = demux.source_id(&m.key) else {
        totals.source_table_full += 1;
        return None;
    };
    totals.decapsulated += 1;
    let seq_event = demux.account(source, m.frame.len(), &m.meta, ts_ns);
    Some(Delivery {
        source,
        key: m.key,
        new_source,
        frame: m.frame,
        link: m.link,
        meta: m.meta,
        seq_event,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tapwire_formats::decap::Kind;
    use tapwire_formats::wire::erspan::{Cos, Encap, Index, PacketII, ReprII, SessionId, VlanId};
    use tapwire_formats::wire::ethernet::{self, EtherType, Frame};
    use tapwire_formats::wire::ip::Protocol;
    use tapwire_formats::wire::{gre, ipv4};

    use super::*;

    /// The mirrored frame: Ethernet, IPv4.
    const INNER: [u8; 20] = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0, 0, 20, 0, 0,
    ];

    /// An IPv4 datagram from `src` carrying `payload` as `protocol`.
    fn ipv4(src: [u8; 4], protocol: Protocol, payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; ipv4::MIN_HEADER_LEN + payload.len()];
        ipv4::Repr {
            src_addr: Ipv4Addr::from(src),
            dst_addr: Ipv4Addr::new(10, 1, 255, 254),
            protocol,
            payload_len: payload.len(),
            ttl: 64,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut d[..]));
        d[ipv4::MIN_HEADER_LEN..].copy_from_slice(payload);
        d
    }

    /// GRE (with `seq`) and ERSPAN II session `session`, then [`INNER`].
    fn erspan_ii(session: u16, seq: u32, truncated: bool) -> Vec<u8> {
        let gre = gre::Repr {
            protocol: gre::Protocol::Erspan,
            checksum: false,
            key: None,
            sequence: Some(seq),
        };
        let ers = ReprII {
            vlan: VlanId::from_bits(0),
            cos: Cos::from_bits(0),
            encap: Encap::Untagged,
            truncated,
            session_id: SessionId::from_bits(session),
            index: Index::from_bits(1),
        };
        let mut p = vec![0u8; gre.buffer_len() + ers.buffer_len() + INNER.len()];
        gre.emit(&mut gre::Packet::new_unchecked(&mut p[..]));
        let e = &mut p[gre.buffer_len()..];
        ers.emit(&mut PacketII::new_unchecked(&mut *e));
        e[ers.buffer_len()..].copy_from_slice(&INNER);
        p
    }

    fn pipeline(max_sources: usize) -> Pipeline {
        Pipeline::new(Config::default(), max_sources)
    }

    #[test]
    fn mirrored_frames_are_delivered_by_source_and_counted() {
        let mut p = pipeline(MAX_SOURCES);
        let first = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(42, 0, false));
        let d = p.ip(&first, 1_000).expect("delivered");
        assert_eq!(d.source, 0);
        assert!(d.new_source);
        assert_eq!(
            d.key,
            SourceKey {
                src: "10.0.0.5".parse().expect("addr"),
                kind: Kind::ErspanII,
                id: 42,
            }
        );
        assert_eq!(d.frame, INNER);
        assert_eq!(d.link, LinkType::Ethernet);
        assert_eq!(d.seq_event, None);
        let next = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(42, 1, false));
        let d = p.ip(&next, 2_000).expect("delivered");
        assert_eq!((d.source, d.new_source), (0, false));
        // Another sender with the same session id is another source.
        let other = ipv4([10, 0, 0, 6], Protocol::Gre, &erspan_ii(42, 0, false));
        let d = p.ip(&other, 3_000).expect("delivered");
        assert_eq!((d.source, d.new_source), (1, true));
        assert_eq!(p.key(1).src, "10.0.0.6".parse::<IpAddr>().expect("addr"));
        let t = p.totals();
        assert_eq!((t.packets_read, t.decapsulated), (3, 3));
        assert_eq!(p.demux().source(0).packets, 2);
        assert_eq!(p.demux().source(0).bytes, 2 * INNER.len() as u64);
    }

    #[test]
    fn what_is_not_delivered_is_counted_by_kind_and_reason() {
        let mut p = pipeline(MAX_SOURCES);
        let ping = ipv4([10, 0, 0, 5], Protocol::Icmp, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert!(p.ip(&ping, 0).is_none());
        let mut cut = erspan_ii(42, 0, false);
        cut.truncate(6);
        assert!(p.ip(&ipv4([10, 0, 0, 5], Protocol::Gre, &cut), 0).is_none());
        // A frame of something else on an AF_PACKET ring: ARP.
        let mut arp = vec![0u8; 42];
        ethernet::Repr {
            dst_addr: [0xff; 6],
            src_addr: [2, 0, 0, 0, 0, 9],
            ethertype: EtherType::Arp,
        }
        .emit(&mut Frame::new_unchecked(&mut arp[..]));
        assert!(p.link(LinkType::Ethernet, &arp, 0).is_none());
        let t = p.totals();
        assert_eq!((t.packets_read, t.decapsulated), (3, 0));
        assert_eq!(t.not_mirror.get(&NotMirror::Icmp), Some(&1));
        assert_eq!(t.not_mirror.get(&NotMirror::NonIp), Some(&1));
        assert_eq!(t.malformed.values().sum::<u64>(), 1);
        assert!(p.demux().is_empty());
    }

    #[test]
    fn a_full_source_table_refuses_new_sources_only() {
        let mut p = pipeline(1);
        let a = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(1, 0, false));
        let b = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(2, 0, false));
        assert!(p.ip(&a, 0).is_some());
        assert!(p.ip(&b, 0).is_none());
        assert!(p.ip(&a, 0).is_some());
        let t = p.totals();
        assert_eq!((t.source_table_full, t.decapsulated), (1, 2));
    }

    #[test]
    fn gaps_and_cut_frames_are_commented() {
        let mut p = pipeline(MAX_SOURCES);
        let mut comment = String::new();
        let first = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(7, 100, false));
        p.ip(&first, 0).expect("delivered").comment(&mut comment);
        assert_eq!(comment, "");
        let after_gap = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(7, 104, true));
        let d = p.ip(&after_gap, 0).expect("delivered");
        assert!(d.meta.truncated);
        d.comment(&mut comment);
        assert_eq!(
            comment,
            "tapwire: sequence gap, 3 lost before this packet (seq 101-103); \
             tapwire: truncated by the sender (ERSPAN T bit)"
        );
        assert_eq!(p.demux().sequence(0).lost, 3);
    }

    #[test]
    fn every_input_kind_reaches_the_same_source() {
        let mut p = pipeline(MAX_SOURCES);
        let datagram = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(9, 0, false));
        let mut frame = vec![0u8; ethernet::HEADER_LEN];
        ethernet::Repr {
            dst_addr: [2, 0, 0, 0, 0, 0xfe],
            src_addr: [2, 0, 0, 0, 0, 0xfd],
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut Frame::new_unchecked(&mut frame[..]));
        frame.extend_from_slice(&datagram);
        let src: IpAddr = "10.0.0.5".parse().expect("addr");
        let by_link = p.link(LinkType::Ethernet, &frame, 0).expect("link").source;
        let by_ip = p.ip(&datagram, 0).expect("ip").source;
        // A raw IPv6 socket hands over the GRE packet and the sender's address.
        let by_gre = p.gre(src, &erspan_ii(9, 2, false), 0).expect("gre").source;
        assert_eq!((by_link, by_ip, by_gre), (0, 0, 0));
        // VXLAN on its port: the VNI is the id.
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0x01, 0x00, 0];
        vxlan.extend_from_slice(&INNER);
        let d = p.udp(src, 4789, &vxlan, 0).expect("vxlan");
        assert_eq!(
            (d.key.kind, d.key.id, d.frame),
            (Kind::Vxlan, 256, &INNER[..])
        );
        // The same bytes on another port are not mirror traffic.
        assert!(p.udp(src, 4790, &vxlan, 0).is_none());
        assert_eq!(p.totals().not_mirror.get(&NotMirror::UdpOther), Some(&1));
    }
}
