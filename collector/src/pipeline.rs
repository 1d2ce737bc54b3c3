//! Decapsulation plus demultiplexing plus accounting: what every input (capture files, raw
//! sockets, UDP sockets, AF_PACKET) feeds, and what every output (files, TAP) is fed from.
//!
//! Admission: every mirrored frame is put to an [`Admission`] before it is accounted, whatever
//! input it came from: the allow-list for every frame, then, for a source not in the table,
//! whether a source may be made at all (a session takes it, or auto-discovery has room) and
//! whether the table has room. A refused frame leaves nothing behind but a count by reason, so
//! refused or unknown traffic cannot fill the table that known senders need.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tapwire_api_types::Refusals;
use tapwire_formats::capture::LinkType;
use tapwire_formats::decap::{self, Config, Decapsulator, Meta, NotMirror, Outcome, SourceKey};
use tapwire_formats::wire::Reason;

use crate::demux::{Demux, Retired, SeqEvent, SourceId};

/// Bound on distinct sources of `tapwire decap`: enough for any real capture, small enough
/// that a capture of spoofed outer addresses cannot exhaust memory.
pub const MAX_SOURCES: usize = 65_536;

/// Why a mirrored frame was refused before a source was made for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its outer source is outside the allow-list.
    NotAllowed,
    /// No session takes its source and auto-discovery is off.
    NoSession,
    /// Auto-discovery would need a session past its cap.
    AutoSessionCap,
    /// The source table is full and no entry may give way.
    SourceTableFull,
}

impl Refusal {
    /// Counts one packet refused for this reason in `c`.
    pub fn count_in(self, c: &mut Refusals) {
        *match self {
            Refusal::NotAllowed => &mut c.not_allowed,
            Refusal::NoSession => &mut c.no_session,
            Refusal::AutoSessionCap => &mut c.auto_session_cap,
            Refusal::SourceTableFull => &mut c.source_table_full,
        } += 1;
    }
}

/// What the pipeline asks before it accounts a mirrored frame (the engine answers from its
/// router; `tapwire decap` takes everything).
pub trait Admission {
    /// Whether frames from outer source `src` are taken at all (asked for every frame).
    fn allows(&self, src: IpAddr) -> bool;
    /// Whether a source may be made for `key`, not in the table: `Ok(pinned)`, a pinned source
    /// being one a full table keeps (its session is a configured one).
    fn admit(&mut self, key: &SourceKey) -> Result<bool, Refusal>;
}

/// Every source admitted, none pinned: `tapwire decap`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn allows(&self, _: IpAddr) -> bool {
        true
    }

    fn admit(&mut self, _: &SourceKey) -> Result<bool, Refusal> {
        Ok(false)
    }
}

/// What became of one packet fed to the pipeline.
#[derive(Debug)]
pub enum Fed<'a> {
    Delivered(Delivery<'a>),
    /// A mirrored frame refused before a source was made (counted in [`Totals::refused`]);
    /// with its outer source.
    Refused(Refusal, IpAddr),
    /// Not mirror traffic, malformed, or a fragment held (counted in the totals).
    Other,
}

impl<'a> Fed<'a> {
    pub fn delivered(self) -> Option<Delivery<'a>> {
        match self {
            Fed::Delivered(d) => Some(d),
            _ => None,
        }
    }
}

/// Packet counts by outcome, for the whole pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets_read: u64,
    pub decapsulated: u64,
    /// Outer fragments waiting for the rest of their datagram.
    pub held_fragments: u64,
    pub not_mirror: BTreeMap<NotMirror, u64>,
    pub malformed: BTreeMap<Reason, u64>,
    /// Mirrored frames refused before a source was made, by reason.
    pub refused: Refusals,
}

/// A mirrored frame, demultiplexed and accounted, ready for the outputs.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub source: SourceId,
    pub key: SourceKey,
    /// The first packet of a source not seen before.
    pub new_source: bool,
    pub frame: &'a [u8],
    pub link: LinkType,
    pub meta: Meta,
    pub seq_event: Option<SeqEvent>,
    /// The source that gave way in a full table to make room for this one, if one did
    /// (boxed: rare, and the delivery stays small).
    pub evicted: Option<Box<Retired>>,
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
        admission: &mut impl Admission,
        link: LinkType,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Fed<'a> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_link(link, data, ts_ns);
        account(&mut self.demux, &mut self.totals, admission, outcome, ts_ns)
    }

    /// An IP datagram from a raw IPv4 socket.
    pub fn ip<'a>(
        &'a mut self,
        admission: &mut impl Admission,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Fed<'a> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_ip(data, ts_ns);
        account(&mut self.demux, &mut self.totals, admission, outcome, ts_ns)
    }

    /// A GRE packet from a raw IPv6 socket, sent by `src`.
    pub fn gre<'a>(
        &'a mut self,
        admission: &mut impl Admission,
        src: IpAddr,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Fed<'a> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_gre(src, data);
        account(&mut self.demux, &mut self.totals, admission, outcome, ts_ns)
    }

    /// A UDP payload sent by `src` to `dst_port`.
    pub fn udp<'a>(
        &'a mut self,
        admission: &mut impl Admission,
        src: IpAddr,
        dst_port: u16,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Fed<'a> {
        self.totals.packets_read += 1;
        let outcome = decap::decap_udp(&self.ports, src, dst_port, data);
        account(&mut self.demux, &mut self.totals, admission, outcome, ts_ns)
    }

    /// Removes the sources with no packet for `idle_ns`.
    pub fn expire_sources(&mut self, now_ns: u64, idle_ns: u64) -> Vec<Retired> {
        self.demux.expire(now_ns, idle_ns)
    }

    /// Whether source `id` is kept when the table is full (after a reload re-routed it).
    pub fn set_pinned(&mut self, id: SourceId, pinned: bool) {
        self.demux.set_pinned(id, pinned);
    }

    /// The source key of an id handed out in a [`Delivery`], while its source is in the table.
    pub fn key(&self, id: SourceId) -> Option<SourceKey> {
        self.demux.source(id).map(|s| s.key)
    }
}

#[inline]
fn account<'a>(
    demux: &mut Demux,
    totals: &mut Totals,
    admission: &mut impl Admission,
    outcome: Outcome<'a>,
    ts_ns: u64,
) -> Fed<'a> {
    let m = match outcome {
        Outcome::Mirrored(m) => m,
        Outcome::NotMirror(kind) => {
            *totals.not_mirror.entry(kind).or_default() += 1;
            return Fed::Other;
        }
        Outcome::Malformed(reason) => {
            *totals.malformed.entry(reason).or_default() += 1;
            return Fed::Other;
        }
        Outcome::Held => {
            totals.held_fragments += 1;
            return Fed::Other;
        }
    };
    let refuse = |totals: &mut Totals, r: Refusal| {
        r.count_in(&mut totals.refused);
        Fed::Refused(r, m.key.src)
    };
    if !admission.allows(m.key.src) {
        return refuse(totals, Refusal::NotAllowed);
    }
    let (source, new_source, evicted) = match demux.lookup(&m.key) {
        Some(id) => (id, false, None),
        None => {
            let pinned = match admission.admit(&m.key) {
                Ok(p) => p,
                Err(r) => return refuse(totals, r),
            };
            match demux.insert(&m.key, pinned, ts_ns) {
                Ok((id, evicted)) => (id, true, evicted.map(Box::new)),
                Err(_) => return refuse(totals, Refusal::SourceTableFull),
            }
        }
    };
    totals.decapsulated += 1;
    let seq_event = demux.account(source, m.frame.len(), &m.meta, ts_ns);
    Fed::Delivered(Delivery {
        source,
        key: m.key,
        new_source,
        frame: m.frame,
        link: m.link,
        meta: m.meta,
        seq_event,
        evicted,
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

    /// `datagram` in an Ethernet frame, as an AF_PACKET ring reads it.
    fn ethernet(datagram: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; ethernet::HEADER_LEN];
        ethernet::Repr {
            dst_addr: [2, 0, 0, 0, 0, 0xfe],
            src_addr: [2, 0, 0, 0, 0, 0xfd],
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut Frame::new_unchecked(&mut frame[..]));
        frame.extend_from_slice(datagram);
        frame
    }

    /// An allow-list of one network, and room for `room` more sources (then auto-discovery's
    /// cap), each pinned or not.
    struct Policy {
        allow: ipnet::IpNet,
        room: usize,
        pinned: bool,
        asked: usize,
    }

    impl Policy {
        fn new(allow: &str, room: usize) -> Policy {
            Policy {
                allow: allow.parse().expect("net"),
                room,
                pinned: false,
                asked: 0,
            }
        }
    }

    impl Admission for Policy {
        fn allows(&self, src: IpAddr) -> bool {
            self.allow.contains(&src)
        }

        fn admit(&mut self, _: &SourceKey) -> Result<bool, Refusal> {
            self.asked += 1;
            if self.room == 0 {
                return Err(Refusal::AutoSessionCap);
            }
            self.room -= 1;
            Ok(self.pinned)
        }
    }

    /// The `i`th of many spoofed outer sources, in 100.64.0.0/10.
    fn spoofed(i: u32) -> [u8; 4] {
        (0x6440_0000 | (i & 0x003f_ffff)).to_be_bytes()
    }

    #[test]
    fn mirrored_frames_are_delivered_by_source_and_counted() {
        let mut p = pipeline(MAX_SOURCES);
        let first = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(42, 0, false));
        let d = p
            .ip(&mut AdmitAll, &first, 1_000)
            .delivered()
            .expect("delivered");
        assert_eq!(d.source, SourceId::new(0, 0));
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
        let d = p
            .ip(&mut AdmitAll, &next, 2_000)
            .delivered()
            .expect("delivered");
        assert_eq!((d.source, d.new_source), (SourceId::new(0, 0), false));
        // Another sender with the same session id is another source.
        let other = ipv4([10, 0, 0, 6], Protocol::Gre, &erspan_ii(42, 0, false));
        let d = p
            .ip(&mut AdmitAll, &other, 3_000)
            .delivered()
            .expect("delivered");
        assert_eq!((d.source, d.new_source), (SourceId::new(1, 0), true));
        assert_eq!(
            p.key(SourceId::new(1, 0)).map(|k| k.src),
            Some("10.0.0.6".parse::<IpAddr>().expect("addr"))
        );
        let t = p.totals();
        assert_eq!((t.packets_read, t.decapsulated), (3, 3));
        assert_eq!(
            p.demux()
                .source(SourceId::new(0, 0))
                .expect("source")
                .packets,
            2
        );
        assert_eq!(
            p.demux().source(SourceId::new(0, 0)).expect("source").bytes,
            2 * INNER.len() as u64
        );
    }

    #[test]
    fn what_is_not_delivered_is_counted_by_kind_and_reason() {
        let mut p = pipeline(MAX_SOURCES);
        let ping = ipv4([10, 0, 0, 5], Protocol::Icmp, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert!(p.ip(&mut AdmitAll, &ping, 0).delivered().is_none());
        let mut cut = erspan_ii(42, 0, false);
        cut.truncate(6);
        assert!(
            p.ip(&mut AdmitAll, &ipv4([10, 0, 0, 5], Protocol::Gre, &cut), 0)
                .delivered()
                .is_none()
        );
        // A frame of something else on an AF_PACKET ring: ARP.
        let mut arp = vec![0u8; 42];
        ethernet::Repr {
            dst_addr: [0xff; 6],
            src_addr: [2, 0, 0, 0, 0, 9],
            ethertype: EtherType::Arp,
        }
        .emit(&mut Frame::new_unchecked(&mut arp[..]));
        assert!(
            p.link(&mut AdmitAll, LinkType::Ethernet, &arp, 0)
                .delivered()
                .is_none()
        );
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
        assert!(p.ip(&mut AdmitAll, &a, 0).delivered().is_some());
        assert!(p.ip(&mut AdmitAll, &b, 0).delivered().is_none());
        assert!(p.ip(&mut AdmitAll, &a, 0).delivered().is_some());
        let t = p.totals();
        assert_eq!((t.refused.source_table_full, t.decapsulated), (1, 2));
    }

    #[test]
    fn the_allow_list_refuses_before_a_source_is_made_on_every_input() {
        let mut p = pipeline(MAX_SOURCES);
        let mut policy = Policy::new("10.0.0.5/32", usize::MAX);
        let foreign: IpAddr = "192.0.2.9".parse().expect("addr");
        let datagram = ipv4([192, 0, 2, 9], Protocol::Gre, &erspan_ii(9, 0, false));
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0x01, 0x00, 0];
        vxlan.extend_from_slice(&INNER);
        let refused = Refusal::NotAllowed;
        assert!(matches!(
            p.link(&mut policy, LinkType::Ethernet, &ethernet(&datagram), 0),
            Fed::Refused(r, a) if r == refused && a == foreign
        ));
        assert!(matches!(p.ip(&mut policy, &datagram, 0), Fed::Refused(r, _) if r == refused));
        let gre = erspan_ii(9, 1, false);
        assert!(matches!(
            p.gre(&mut policy, foreign, &gre, 0),
            Fed::Refused(r, _) if r == refused
        ));
        assert!(matches!(
            p.udp(&mut policy, foreign, 4789, &vxlan, 0),
            Fed::Refused(r, _) if r == refused
        ));
        assert!(p.demux().is_empty());
        assert_eq!(policy.asked, 0, "no source was even considered");
        assert_eq!(p.totals().refused.not_allowed, 4);
        assert_eq!(p.totals().decapsulated, 0);

        // 500 refused spoofed sources on a ring, then the allowed sender: one entry.
        for i in 0..500 {
            let d = ipv4(spoofed(i), Protocol::Gre, &erspan_ii(9, i, false));
            assert!(
                p.link(&mut policy, LinkType::Ethernet, &ethernet(&d), 0)
                    .delivered()
                    .is_none()
            );
        }
        let allowed = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(9, 0, false));
        let frame = ethernet(&allowed);
        assert!(
            p.link(&mut policy, LinkType::Ethernet, &frame, 0)
                .delivered()
                .is_some()
        );
        assert_eq!(p.demux().len(), 1);
        assert_eq!(p.totals().refused.not_allowed, 504);
    }

    #[test]
    fn spoofed_sources_on_a_ring_never_lock_out_the_allowed_sender() {
        let mut p = pipeline(4096);
        let mut policy = Policy::new("10.0.0.0/24", usize::MAX);
        for i in 0..70_000 {
            let d = ipv4(spoofed(i), Protocol::Gre, &erspan_ii(1, i, false));
            p.link(&mut policy, LinkType::Ethernet, &ethernet(&d), 0);
        }
        assert_eq!(p.totals().refused.not_allowed, 70_000);
        for seq in 0..10 {
            let d = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(1, seq, false));
            let frame = ethernet(&d);
            let fed = p.link(&mut policy, LinkType::Ethernet, &frame, 0);
            assert!(
                fed.delivered().is_some(),
                "packet {seq} of the allowed sender"
            );
        }
        assert_eq!(p.demux().len(), 1);
        assert_eq!(p.totals().refused.source_table_full, 0);
    }

    #[test]
    fn a_source_the_admission_refuses_leaves_no_entry_and_known_ones_go_on() {
        let mut p = pipeline(MAX_SOURCES);
        let mut policy = Policy::new("0.0.0.0/0", 2);
        let from = |i: u8, seq: u32| ipv4([10, 0, 0, i], Protocol::Gre, &erspan_ii(1, seq, false));
        assert!(p.ip(&mut policy, &from(1, 0), 0).delivered().is_some());
        assert!(p.ip(&mut policy, &from(2, 0), 0).delivered().is_some());
        assert!(matches!(
            p.ip(&mut policy, &from(3, 0), 0),
            Fed::Refused(Refusal::AutoSessionCap, _)
        ));
        assert!(p.ip(&mut policy, &from(1, 1), 0).delivered().is_some());
        assert_eq!(p.demux().len(), 2);
        assert_eq!(policy.asked, 3, "asked for new sources only");
        assert_eq!(p.totals().refused.auto_session_cap, 1);
    }

    #[test]
    fn a_full_table_takes_room_from_an_idle_unpinned_source_only() {
        const S: u64 = 1_000_000_000;
        let mut p = pipeline(1);
        let mut policy = Policy::new("0.0.0.0/0", usize::MAX);
        let from = |i: u8| ipv4([10, 0, 0, i], Protocol::Gre, &erspan_ii(1, 0, false));
        assert!(p.ip(&mut policy, &from(1), 0).delivered().is_some());
        // Idle 1 s: it keeps its place.
        assert!(matches!(
            p.ip(&mut policy, &from(2), S),
            Fed::Refused(Refusal::SourceTableFull, _)
        ));
        // Idle 6 s: it gives way, and the new source's delivery says so.
        let second = from(2);
        let d = p
            .ip(&mut policy, &second, 6 * S)
            .delivered()
            .expect("room made");
        let gone = d.evicted.expect("evicted");
        assert_eq!(
            (gone.key.src, gone.packets),
            ("10.0.0.1".parse().unwrap(), 1)
        );
        // A pinned source keeps its place however idle.
        policy.pinned = true;
        let mut p = pipeline(1);
        assert!(p.ip(&mut policy, &from(1), 0).delivered().is_some());
        assert!(matches!(
            p.ip(&mut policy, &from(2), 600 * S),
            Fed::Refused(Refusal::SourceTableFull, _)
        ));
        assert_eq!(p.totals().refused.source_table_full, 1);
    }

    #[test]
    fn gaps_and_cut_frames_are_commented() {
        let mut p = pipeline(MAX_SOURCES);
        let mut comment = String::new();
        let first = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(7, 100, false));
        p.ip(&mut AdmitAll, &first, 0)
            .delivered()
            .expect("delivered")
            .comment(&mut comment);
        assert_eq!(comment, "");
        let after_gap = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(7, 104, true));
        let d = p
            .ip(&mut AdmitAll, &after_gap, 0)
            .delivered()
            .expect("delivered");
        assert!(d.meta.truncated);
        d.comment(&mut comment);
        assert_eq!(
            comment,
            "tapwire: sequence gap, 3 lost before this packet (seq 101-103); \
             tapwire: truncated by the sender (ERSPAN T bit)"
        );
        assert_eq!(p.demux().sequence(SourceId::new(0, 0)).lost, 3);
    }

    #[test]
    fn every_input_kind_reaches_the_same_source() {
        let mut p = pipeline(MAX_SOURCES);
        let datagram = ipv4([10, 0, 0, 5], Protocol::Gre, &erspan_ii(9, 0, false));
        let frame = ethernet(&datagram);
        let src: IpAddr = "10.0.0.5".parse().expect("addr");
        let by_link = p
            .link(&mut AdmitAll, LinkType::Ethernet, &frame, 0)
            .delivered()
            .expect("link")
            .source;
        let by_ip = p
            .ip(&mut AdmitAll, &datagram, 0)
            .delivered()
            .expect("ip")
            .source;
        // A raw IPv6 socket hands over the GRE packet and the sender's address.
        let by_gre = p
            .gre(&mut AdmitAll, src, &erspan_ii(9, 2, false), 0)
            .delivered()
            .expect("gre")
            .source;
        let first = SourceId::new(0, 0);
        assert_eq!((by_link, by_ip, by_gre), (first, first, first));
        // VXLAN on its port: the VNI is the id.
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0x01, 0x00, 0];
        vxlan.extend_from_slice(&INNER);
        let d = p
            .udp(&mut AdmitAll, src, 4789, &vxlan, 0)
            .delivered()
            .expect("vxlan");
        assert_eq!(
            (d.key.kind, d.key.id, d.frame),
            (Kind::Vxlan, 256, &INNER[..])
        );
        // The same bytes on another port are not mirror traffic.
        assert!(
            p.udp(&mut AdmitAll, src, 4790, &vxlan, 0)
                .delivered()
                .is_none()
        );
        assert_eq!(p.totals().not_mirror.get(&NotMirror::UdpOther), Some(&1));
    }
}
