//! The decapsulation pipeline: a captured or received packet in, its mirrored inner frame and
//! source key out, or the reason it is not one.
//!
//! Entry points match what each input hands over: [`Decapsulator::decap_link`] for capture
//! files and AF_PACKET (a link-layer frame), [`Decapsulator::decap_ip`] for raw IPv4 sockets
//! (the IP header first), [`decap_gre`] for raw IPv6 GRE sockets (the GRE header first) and
//! [`decap_udp`] for UDP sockets (the UDP payload).

use core::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::capture::LinkType;
use crate::defrag::{self, Push, Reassembler};
use crate::wire::erspan::{self, Direction, Encap, FrameType, PacketII, PacketIII, ReprIII};
use crate::wire::ethernet::{EtherType, Frame};
use crate::wire::ip::Protocol;
use crate::wire::{Error, Layer, Reason, geneve, gre, ipv4, ipv6, sll, tzsp, udp, vxlan};

/// The mirror encapsulations tapwire decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// ERSPAN Type I: GRE without a sequence number, no ERSPAN header.
    ErspanI,
    /// ERSPAN Type II.
    ErspanII,
    /// ERSPAN Type III.
    ErspanIII,
    /// GRE transparent Ethernet bridging (0x6558).
    Gre,
    /// VXLAN.
    Vxlan,
    /// GENEVE.
    Geneve,
    /// TZSP.
    Tzsp,
}

impl Kind {
    /// Every kind, in the order they are shown.
    pub const ALL: [Kind; 7] = [
        Kind::ErspanI,
        Kind::ErspanII,
        Kind::ErspanIII,
        Kind::Gre,
        Kind::Vxlan,
        Kind::Geneve,
        Kind::Tzsp,
    ];

    /// The kind's name on the command line, in files and in source keys (`erspan-ii`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::ErspanI => "erspan-i",
            Kind::ErspanII => "erspan-ii",
            Kind::ErspanIII => "erspan-iii",
            Kind::Gre => "gre",
            Kind::Vxlan => "vxlan",
            Kind::Geneve => "geneve",
            Kind::Tzsp => "tzsp",
        }
    }

    /// What the id of a source of this kind is called.
    pub const fn id_name(self) -> Option<&'static str> {
        match self {
            Kind::ErspanII | Kind::ErspanIII => Some("session"),
            Kind::Gre => Some("key"),
            Kind::Vxlan | Kind::Geneve => Some("vni"),
            Kind::ErspanI | Kind::Tzsp => None,
        }
    }

    /// Whether the sender's GRE sequence numbers, if any, can be tracked.
    pub const fn is_gre(self) -> bool {
        matches!(
            self,
            Kind::ErspanI | Kind::ErspanII | Kind::ErspanIII | Kind::Gre
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown kind {s:?}; expected one of erspan-i, erspan-ii, erspan-iii, gre, vxlan, geneve, tzsp")
        })
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One mirrored stream as it arrives: outer source address, encapsulation, and session id /
/// GRE key / VNI (0 where the kind has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// The outer source address.
    pub src: IpAddr,
    /// The encapsulation.
    pub kind: Kind,
    /// The ERSPAN session id, GRE key or VNI.
    pub id: u32,
}

impl SourceKey {
    /// A file-name stem: `<src>_<kind>_<id>`.
    pub fn file_stem(&self) -> String {
        format!("{}_{}_{}", self.src, self.kind, self.id)
    }
}

impl fmt::Display for SourceKey {
    /// `10.0.0.5 erspan-ii session 42`, `10.0.0.7 vxlan vni 100`, `10.0.0.9 tzsp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.id_name() {
            Some(name) => write!(f, "{} {} {} {}", self.src, self.kind, name, self.id),
            None => write!(f, "{} {}", self.src, self.kind),
        }
    }
}

/// What the encapsulation said about the mirrored frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// GRE sequence number, when the S bit is set.
    pub seq: Option<u32>,
    /// ERSPAN Type III `D`.
    pub direction: Option<Direction>,
    /// ERSPAN `T`: the sender cut the frame.
    pub truncated: bool,
    /// The VLAN the header carries for a frame that does not carry its tag itself
    /// (Type II `En` other than 3, or Type III); `None` when 0.
    pub vlan: Option<u16>,
    /// The ERSPAN class of service.
    pub cos: Option<u8>,
    /// ERSPAN Type II port index.
    pub index: Option<u32>,
    /// ERSPAN Type III hardware id.
    pub hardware_id: Option<u8>,
    /// ERSPAN Type III capture time, when it is absolute.
    pub erspan_time_ns: Option<u64>,
    /// The GRE header carries a checksum that does not verify. The frame is kept (unless
    /// [`Config::strict_gre_checksum`]): Open vSwitch's userspace datapath repeats one checksum
    /// on every packet of a port with `csum=true` and `seq=true`, so it is no sign of damage.
    pub gre_checksum_bad: bool,
}

/// A decapsulated mirrored frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirrored<'a> {
    /// Which stream it belongs to.
    pub key: SourceKey,
    /// The inner frame, of link type `link` (Ethernet, or raw IP for ERSPAN III FT=2 and
    /// GENEVE carrying IP).
    pub frame: &'a [u8],
    /// The inner frame's link type.
    pub link: LinkType,
    /// What the encapsulation said about it.
    pub meta: Meta,
}

/// Traffic that is well formed but not mirrored, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NotMirror {
    /// Not IP at the outer layer (ARP, LLDP, STP...).
    NonIp,
    /// GRE carrying IPv4/IPv6 (a routed tunnel).
    GreL3,
    /// GRE with protocol 0: keepalives.
    GreKeepalive,
    /// PPTP's enhanced GRE (version 1).
    Pptp,
    /// Other GRE protocol types.
    GreOther,
    /// UDP on a port that is not a mirror port.
    UdpOther,
    /// TCP.
    Tcp,
    /// ICMP (v4 or v6).
    Icmp,
    /// Any other IP protocol.
    OtherIp,
    /// TZSP that is not a received Ethernet frame (keepalives, other encapsulations).
    TzspOther,
    /// GENEVE OAM or a payload protocol that is neither Ethernet nor IP.
    GeneveOther,
}

impl NotMirror {
    /// The kind's name in counting keys (`gre_l3`).
    pub const fn as_str(self) -> &'static str {
        match self {
            NotMirror::NonIp => "non_ip",
            NotMirror::GreL3 => "gre_l3",
            NotMirror::GreKeepalive => "gre_keepalive",
            NotMirror::Pptp => "pptp",
            NotMirror::GreOther => "gre_other",
            NotMirror::UdpOther => "udp_other",
            NotMirror::Tcp => "tcp",
            NotMirror::Icmp => "icmp",
            NotMirror::OtherIp => "other_ip",
            NotMirror::TzspOther => "tzsp_other",
            NotMirror::GeneveOther => "geneve_other",
        }
    }
}

impl fmt::Display for NotMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of decapsulating one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A mirrored frame.
    Mirrored(Mirrored<'a>),
    /// Traffic that is not mirrored, by kind.
    NotMirror(NotMirror),
    /// A packet that could not be decoded, and why.
    Malformed(Reason),
    /// An outer fragment was stored until the rest of its datagram arrives.
    Held,
}

impl From<Error> for Outcome<'_> {
    #[inline]
    fn from(e: Error) -> Self {
        Outcome::Malformed(e.reason())
    }
}

/// UDP destination ports recognised as mirror encapsulations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    /// Ports carrying VXLAN.
    pub vxlan: Vec<u16>,
    /// Ports carrying GENEVE.
    pub geneve: Vec<u16>,
    /// Ports carrying TZSP.
    pub tzsp: Vec<u16>,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            vxlan: vec![vxlan::PORT],
            geneve: vec![geneve::PORT],
            tzsp: vec![tzsp::PORT],
        }
    }
}

/// How a [`Decapsulator`] decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// UDP ports of the UDP encapsulations.
    pub ports: Ports,
    /// Bounds of the outer fragment reassembly.
    pub defrag: defrag::Config,
    /// A GRE checksum that does not verify makes the packet malformed (`gre_checksum`) instead
    /// of a mirrored frame with [`Meta::gre_checksum_bad`] set.
    pub strict_gre_checksum: bool,
}

/// Decapsulates packets; holds the outer-fragment reassembly state.
#[derive(Debug)]
pub struct Decapsulator {
    ports: Ports,
    defrag: Reassembler,
    strict_gre_checksum: bool,
}

impl Decapsulator {
    /// A decapsulator with empty reassembly state.
    pub fn new(config: Config) -> Self {
        Decapsulator {
            ports: config.ports,
            defrag: Reassembler::new(config.defrag),
            strict_gre_checksum: config.strict_gre_checksum,
        }
    }

    /// The reassembly counters so far.
    pub fn defrag_stats(&self) -> defrag::Stats {
        self.defrag.stats()
    }

    /// Datagrams whose fragments are still incomplete.
    pub fn pending_datagrams(&self) -> usize {
        self.defrag.pending()
    }

    /// Drops incomplete datagrams older than the reassembly timeout.
    pub fn expire(&mut self, now_ns: u64) {
        self.defrag.expire(now_ns);
    }

    /// Decapsulates a GRE packet (header first) sent from `src`, as [`decap_gre`] does, with
    /// this decapsulator's checksum policy.
    #[inline]
    pub fn decap_gre<'a>(&self, src: IpAddr, data: &'a [u8]) -> Outcome<'a> {
        gre(src, data, self.strict_gre_checksum)
    }

    /// Decapsulates a link-layer frame of type `link` captured at `now_ns`.
    #[inline]
    pub fn decap_link<'a>(
        &'a mut self,
        link: LinkType,
        data: &'a [u8],
        now_ns: u64,
    ) -> Outcome<'a> {
        let ip = match link_payload(link, data) {
            Ok(Some(ip)) => ip,
            Ok(None) => return Outcome::NotMirror(NotMirror::NonIp),
            Err(e) => return e.into(),
        };
        self.decap_ip(ip, now_ns)
    }

    /// Decapsulates an IPv4 or IPv6 datagram, told apart by the version nibble.
    #[inline]
    pub fn decap_ip<'a>(&'a mut self, data: &'a [u8], now_ns: u64) -> Outcome<'a> {
        match data.first().map(|b| b >> 4) {
            Some(4) => self.decap_ipv4(data, now_ns),
            Some(6) => self.decap_ipv6(data, now_ns),
            Some(v) => Error::Version {
                layer: Layer::Ipv4,
                version: v,
            }
            .into(),
            None => Error::Truncated {
                layer: Layer::Ipv4,
                needed: 1,
                got: 0,
            }
            .into(),
        }
    }

    #[inline]
    fn decap_ipv4<'a>(&'a mut self, data: &'a [u8], now_ns: u64) -> Outcome<'a> {
        let p = match ipv4::Packet::new_checked(data) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let src = IpAddr::V4(p.src_addr());
        let protocol = p.protocol();
        let payload = if p.is_fragment() {
            let key = defrag::Key {
                src,
                dst: IpAddr::V4(p.dst_addr()),
                ident: u32::from(p.ident()),
                protocol: protocol.into(),
            };
            match self
                .defrag
                .push(key, p.frag_offset(), p.more_frags(), p.payload(), now_ns)
            {
                Push::Complete(d) => d,
                Push::Held => return Outcome::Held,
                Push::Invalid => {
                    return Outcome::Malformed(Reason {
                        layer: Layer::Ipv4,
                        what: "fragment",
                    });
                }
            }
        } else {
            p.payload()
        };
        upper_layer(
            &self.ports,
            src,
            protocol,
            payload,
            self.strict_gre_checksum,
        )
    }

    fn decap_ipv6<'a>(&'a mut self, data: &'a [u8], now_ns: u64) -> Outcome<'a> {
        let p = match ipv6::Packet::new_checked(data) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let ul = match p.upper_layer() {
            Ok(ul) => ul,
            Err(e) => return e.into(),
        };
        let src = IpAddr::V6(p.src_addr());
        let rest = p.from_offset(ul.offset);
        let payload = match ul.fragment {
            Some(f) if f.offset != 0 || f.more => {
                let key = defrag::Key {
                    src,
                    dst: IpAddr::V6(p.dst_addr()),
                    ident: f.ident,
                    protocol: 44,
                };
                match self.defrag.push(key, f.offset, f.more, rest, now_ns) {
                    Push::Complete(d) => d,
                    Push::Held => return Outcome::Held,
                    Push::Invalid => {
                        return Outcome::Malformed(Reason {
                            layer: Layer::Ipv6,
                            what: "fragment",
                        });
                    }
                }
            }
            _ => rest,
        };
        upper_layer(
            &self.ports,
            src,
            ul.protocol,
            payload,
            self.strict_gre_checksum,
        )
    }
}

/// The IP datagram inside a link-layer frame; `Ok(None)` when it carries something else.
#[inline]
pub fn link_payload(link: LinkType, data: &[u8]) -> Result<Option<&[u8]>, Error> {
    let (ethertype, offset) = match link {
        LinkType::Ethernet => {
            let u = Frame::new_checked(data)?.untag()?;
            (u.ethertype, u.offset)
        }
        LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => return Ok(Some(data)),
        LinkType::LinuxSll => {
            let c = sll::parse_sll(data)?;
            (c.ethertype, c.header_len)
        }
        LinkType::LinuxSll2 => {
            let c = sll::parse_sll2(data)?;
            (c.ethertype, c.header_len)
        }
        LinkType::Null | LinkType::Loop => {
            if data.len() < 4 {
                return Err(Error::Truncated {
                    layer: Layer::Link,
                    needed: 4,
                    got: data.len(),
                });
            }
            // The address family, in host order for NULL and network order for LOOP; accept
            // either order: the values do not collide.
            let fam = [data[0], data[1], data[2], data[3]];
            let af = u32::from_le_bytes(fam).min(u32::from_be_bytes(fam));
            return Ok(match af {
                2 | 24 | 28 | 30 => Some(&data[4..]),
                _ => None,
            });
        }
        LinkType::Other(_) => {
            return Err(Error::Unsupported {
                layer: Layer::Link,
                what: "linktype",
            });
        }
    };
    Ok(match ethertype {
        EtherType::Ipv4 | EtherType::Ipv6 => Some(&data[offset..]),
        _ => None,
    })
}

#[inline]
fn upper_layer<'a>(
    ports: &Ports,
    src: IpAddr,
    protocol: Protocol,
    payload: &'a [u8],
    strict_gre_checksum: bool,
) -> Outcome<'a> {
    match protocol {
        Protocol::Gre => gre(src, payload, strict_gre_checksum),
        Protocol::Udp => match udp::Packet::new_checked(payload) {
            Ok(u) => decap_udp(ports, src, u.dst_port(), u.payload()),
            Err(e) => e.into(),
        },
        Protocol::Tcp => Outcome::NotMirror(NotMirror::Tcp),
        Protocol::Icmp | Protocol::Icmpv6 => Outcome::NotMirror(NotMirror::Icmp),
        _ => Outcome::NotMirror(NotMirror::OtherIp),
    }
}

/// Decapsulates a GRE packet (header first) sent from `src`. A checksum that does not verify
/// is reported in [`Meta::gre_checksum_bad`]; the frame is returned all the same.
#[inline]
pub fn decap_gre(src: IpAddr, data: &[u8]) -> Outcome<'_> {
    gre(src, data, false)
}

/// [`decap_gre`]; with `strict_gre_checksum`, a checksum that does not verify is malformed.
#[inline]
fn gre(src: IpAddr, data: &[u8], strict_gre_checksum: bool) -> Outcome<'_> {
    let p = match gre::Packet::new_checked(data) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    if p.version() == 1 {
        return Outcome::NotMirror(NotMirror::Pptp);
    }
    if p.version() != 0 {
        return Error::Version {
            layer: Layer::Gre,
            version: p.version(),
        }
        .into();
    }
    let gre_checksum_bad = !p.verify_checksum();
    if gre_checksum_bad && strict_gre_checksum {
        return Outcome::Malformed(Reason {
            layer: Layer::Gre,
            what: "checksum",
        });
    }
    let seq = p.sequence();
    let payload = p.payload();
    // Each arm builds its Meta whole: assembling it field by field and then copying it into the
    // Outcome stalled on store forwarding (perf showed a fifth of decap_gre on that copy).
    let (kind, id, frame, link, meta) = match p.protocol() {
        gre::Protocol::Erspan if !p.sequence_present() => (
            Kind::ErspanI,
            0,
            payload,
            LinkType::Ethernet,
            Meta {
                seq,
                gre_checksum_bad,
                ..Meta::default()
            },
        ),
        gre::Protocol::Erspan => match erspan::version(payload) {
            Some(2) => return erspan_iii(src, payload, seq, gre_checksum_bad),
            _ => {
                let e = match PacketII::new_checked(payload) {
                    Ok(e) => e,
                    Err(e) => return e.into(),
                };
                if e.version() != 1 {
                    return Error::Version {
                        layer: Layer::ErspanII,
                        version: e.version(),
                    }
                    .into();
                }
                let vlan = e.vlan().value();
                let meta = Meta {
                    seq,
                    truncated: e.truncated(),
                    cos: Some(e.cos().value()),
                    index: Some(e.index().value()),
                    vlan: (e.encap() != Encap::InFrame && vlan != 0).then_some(vlan),
                    gre_checksum_bad,
                    ..Meta::default()
                };
                (
                    Kind::ErspanII,
                    u32::from(e.session_id().value()),
                    e.payload(),
                    LinkType::Ethernet,
                    meta,
                )
            }
        },
        gre::Protocol::ErspanIII => return erspan_iii(src, payload, seq, gre_checksum_bad),
        gre::Protocol::TransparentEthernet => (
            Kind::Gre,
            p.key().unwrap_or(0),
            payload,
            LinkType::Ethernet,
            Meta {
                seq,
                gre_checksum_bad,
                ..Meta::default()
            },
        ),
        gre::Protocol::Ipv4 | gre::Protocol::Ipv6 => return Outcome::NotMirror(NotMirror::GreL3),
        gre::Protocol::Unknown(0) => return Outcome::NotMirror(NotMirror::GreKeepalive),
        _ => return Outcome::NotMirror(NotMirror::GreOther),
    };
    mirrored(SourceKey { src, kind, id }, frame, link, meta)
}

fn erspan_iii(
    src: IpAddr,
    payload: &[u8],
    seq: Option<u32>,
    gre_checksum_bad: bool,
) -> Outcome<'_> {
    let e = match PacketIII::new_checked(payload) {
        Ok(e) => e,
        Err(e) => return e.into(),
    };
    let r = match ReprIII::parse(&e) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    let link = match r.frame_type {
        FrameType::Ethernet => LinkType::Ethernet,
        FrameType::Ip => LinkType::Raw,
        FrameType::Unknown(_) => {
            return Outcome::Malformed(Reason {
                layer: Layer::ErspanIII,
                what: "frame_type",
            });
        }
    };
    let vlan = r.vlan.value();
    let meta = Meta {
        seq,
        truncated: r.truncated,
        cos: Some(r.cos.value()),
        direction: Some(r.direction),
        hardware_id: Some(r.hardware_id.value()),
        erspan_time_ns: r.absolute_time_ns(),
        vlan: (vlan != 0).then_some(vlan),
        index: None,
        gre_checksum_bad,
    };
    mirrored(
        SourceKey {
            src,
            kind: Kind::ErspanIII,
            id: u32::from(r.session_id.value()),
        },
        e.payload(),
        link,
        meta,
    )
}

/// Decapsulates a UDP payload sent from `src` to `dst_port`.
pub fn decap_udp<'a>(ports: &Ports, src: IpAddr, dst_port: u16, data: &'a [u8]) -> Outcome<'a> {
    if ports.vxlan.contains(&dst_port) {
        let p = match vxlan::Packet::new_checked(data) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let r = match vxlan::Repr::parse(&p) {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        return mirrored(
            SourceKey {
                src,
                kind: Kind::Vxlan,
                id: r.vni.value(),
            },
            p.payload(),
            LinkType::Ethernet,
            Meta::default(),
        );
    }
    if ports.geneve.contains(&dst_port) {
        let p = match geneve::Packet::new_checked(data) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        if p.version() != 0 {
            return Error::Version {
                layer: Layer::Geneve,
                version: p.version(),
            }
            .into();
        }
        let link = match p.protocol() {
            _ if p.oam() => return Outcome::NotMirror(NotMirror::GeneveOther),
            geneve::PROTOCOL_ETHERNET => LinkType::Ethernet,
            0x0800 | 0x86dd => LinkType::Raw,
            _ => return Outcome::NotMirror(NotMirror::GeneveOther),
        };
        return mirrored(
            SourceKey {
                src,
                kind: Kind::Geneve,
                id: p.vni().value(),
            },
            p.payload(),
            link,
            Meta::default(),
        );
    }
    if ports.tzsp.contains(&dst_port) {
        let p = match tzsp::Packet::new_checked(data) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        if p.version() != 1 {
            return Error::Version {
                layer: Layer::Tzsp,
                version: p.version(),
            }
            .into();
        }
        if !matches!(p.packet_type(), tzsp::Type::Received | tzsp::Type::Transmit)
            || p.encapsulation() != tzsp::ENCAP_ETHERNET
        {
            return Outcome::NotMirror(NotMirror::TzspOther);
        }
        return mirrored(
            SourceKey {
                src,
                kind: Kind::Tzsp,
                id: 0,
            },
            p.payload(),
            LinkType::Ethernet,
            Meta::default(),
        );
    }
    Outcome::NotMirror(NotMirror::UdpOther)
}

#[inline]
fn mirrored(key: SourceKey, frame: &[u8], link: LinkType, meta: Meta) -> Outcome<'_> {
    if frame.is_empty() {
        return Outcome::Malformed(Reason {
            layer: layer_of(key.kind),
            what: "empty_frame",
        });
    }
    Outcome::Mirrored(Mirrored {
        key,
        frame,
        link,
        meta,
    })
}

const fn layer_of(kind: Kind) -> Layer {
    match kind {
        Kind::ErspanI | Kind::Gre => Layer::Gre,
        Kind::ErspanII => Layer::ErspanII,
        Kind::ErspanIII => Layer::ErspanIII,
        Kind::Vxlan => Layer::Vxlan,
        Kind::Geneve => Layer::Geneve,
        Kind::Tzsp => Layer::Tzsp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::erspan::{
        Bso, Cos, Granularity, HardwareId, Index, ReprII, SessionId, VlanId,
    };

    const INNER: [u8; 20] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0x08, 0x00, 0x45,
        0, 0, 20, 0, 0,
    ];

    fn ipv4(src: [u8; 4], protocol: Protocol, payload: &[u8]) -> Vec<u8> {
        let repr = ipv4::Repr {
            src_addr: src.into(),
            dst_addr: [10, 0, 0, 100].into(),
            protocol,
            payload_len: payload.len(),
            ttl: 64,
            ident: 1,
            dont_frag: false,
        };
        let mut b = vec![0u8; 20];
        repr.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
        b.extend_from_slice(payload);
        b
    }

    fn gre_packet(
        proto: gre::Protocol,
        key: Option<u32>,
        seq: Option<u32>,
        body: &[u8],
    ) -> Vec<u8> {
        let repr = gre::Repr {
            protocol: proto,
            checksum: false,
            key,
            sequence: seq,
        };
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit(&mut gre::Packet::new_unchecked(&mut b[..]));
        b.extend_from_slice(body);
        b
    }

    fn erspan_ii(session: u16, vlan: u16, encap: Encap) -> Vec<u8> {
        let r = ReprII {
            vlan: VlanId::try_new(vlan).unwrap(),
            cos: Cos::try_new(0).unwrap(),
            encap,
            truncated: true,
            session_id: SessionId::try_new(session).unwrap(),
            index: Index::try_new(3).unwrap(),
        };
        let mut b = vec![0u8; 8];
        r.emit(&mut PacketII::new_unchecked(&mut b[..]));
        b.extend_from_slice(&INNER);
        b
    }

    #[test]
    fn type_i_ii_iii_and_teb() {
        let mut d = Decapsulator::new(Config::default());
        let src = IpAddr::from([10, 0, 0, 5]);

        let i = ipv4(
            [10, 0, 0, 5],
            Protocol::Gre,
            &gre_packet(gre::Protocol::Erspan, None, None, &INNER),
        );
        let Outcome::Mirrored(m) = d.decap_ip(&i, 0) else {
            panic!()
        };
        assert_eq!(
            m.key,
            SourceKey {
                src,
                kind: Kind::ErspanI,
                id: 0
            }
        );
        assert_eq!(m.frame, INNER);

        let ii = ipv4(
            [10, 0, 0, 5],
            Protocol::Gre,
            &gre_packet(
                gre::Protocol::Erspan,
                None,
                Some(77),
                &erspan_ii(42, 100, Encap::Dot1q),
            ),
        );
        let Outcome::Mirrored(m) = d.decap_ip(&ii, 0) else {
            panic!()
        };
        assert_eq!(
            m.key,
            SourceKey {
                src,
                kind: Kind::ErspanII,
                id: 42
            }
        );
        assert_eq!(m.key.to_string(), "10.0.0.5 erspan-ii session 42");
        assert_eq!(m.key.file_stem(), "10.0.0.5_erspan-ii_42");
        assert_eq!(m.meta.seq, Some(77));
        assert_eq!(m.meta.vlan, Some(100));
        assert!(m.meta.truncated);
        assert_eq!(m.frame, INNER);

        let iii = ReprIII {
            vlan: VlanId::try_new(0).unwrap(),
            cos: Cos::default(),
            bso: Bso::Good,
            truncated: false,
            session_id: SessionId::try_new(7).unwrap(),
            timestamp: 5,
            sgt: 0,
            pdu: false,
            frame_type: FrameType::Ip,
            hardware_id: HardwareId::try_new(3).unwrap(),
            direction: Direction::Egress,
            granularity: Granularity::Nanos100,
            platform: Some(erspan::Platform::UpperTimestamp {
                port_index: 1,
                timestamp_upper: 2,
            }),
        };
        let mut body = vec![0u8; iii.buffer_len()];
        iii.emit(&mut PacketIII::new_unchecked(&mut body[..]));
        body.extend_from_slice(&INNER[14..]);
        let pkt = ipv4(
            [10, 0, 0, 5],
            Protocol::Gre,
            &gre_packet(gre::Protocol::ErspanIII, None, None, &body),
        );
        let Outcome::Mirrored(m) = d.decap_ip(&pkt, 0) else {
            panic!()
        };
        assert_eq!(m.key.kind, Kind::ErspanIII);
        assert_eq!(m.link, LinkType::Raw);
        assert_eq!(m.meta.direction, Some(Direction::Egress));
        assert_eq!(m.meta.erspan_time_ns, Some(((2u64 << 32) + 5) * 100));
        assert_eq!(m.meta.seq, None);

        let teb = ipv4(
            [10, 0, 0, 5],
            Protocol::Gre,
            &gre_packet(gre::Protocol::TransparentEthernet, Some(9), Some(1), &INNER),
        );
        let Outcome::Mirrored(m) = d.decap_ip(&teb, 0) else {
            panic!()
        };
        assert_eq!(
            m.key,
            SourceKey {
                src,
                kind: Kind::Gre,
                id: 9
            }
        );
        assert_eq!(m.key.to_string(), "10.0.0.5 gre key 9");
    }

    #[test]
    fn not_mirror_kinds() {
        let mut d = Decapsulator::new(Config::default());
        let l3 = ipv4(
            [1, 1, 1, 1],
            Protocol::Gre,
            &gre_packet(gre::Protocol::Ipv4, None, None, &INNER[14..]),
        );
        assert_eq!(d.decap_ip(&l3, 0), Outcome::NotMirror(NotMirror::GreL3));
        let tcp = ipv4([1, 1, 1, 1], Protocol::Tcp, &[0; 20]);
        assert_eq!(d.decap_ip(&tcp, 0), Outcome::NotMirror(NotMirror::Tcp));
        let mut udp_payload = vec![0, 53, 0, 53, 0, 12, 0, 0];
        udp_payload.extend_from_slice(&[1, 2, 3, 4]);
        let dns = ipv4([1, 1, 1, 1], Protocol::Udp, &udp_payload);
        assert_eq!(d.decap_ip(&dns, 0), Outcome::NotMirror(NotMirror::UdpOther));
        let arp = [&INNER[..12], &[0x08, 0x06, 0, 1][..]].concat();
        assert_eq!(
            d.decap_link(LinkType::Ethernet, &arp, 0),
            Outcome::NotMirror(NotMirror::NonIp)
        );
    }

    #[test]
    fn malformed_names_the_reason() {
        let mut d = Decapsulator::new(Config::default());
        let short = ipv4([1, 1, 1, 1], Protocol::Gre, &[0x10, 0x00, 0x88, 0xbe, 0, 0]);
        assert_eq!(
            d.decap_ip(&short, 0),
            Outcome::Malformed(Reason {
                layer: Layer::Gre,
                what: "truncated"
            })
        );
        let routing = ipv4(
            [1, 1, 1, 1],
            Protocol::Gre,
            &[0x40, 0x00, 0x65, 0x58, 0, 0, 0, 0],
        );
        assert_eq!(
            d.decap_ip(&routing, 0),
            Outcome::Malformed(Reason {
                layer: Layer::Gre,
                what: "routing"
            })
        );
        let mut ii = erspan_ii(1, 0, Encap::Untagged);
        ii[0] = 0x30; // version 3
        let bad = ipv4(
            [1, 1, 1, 1],
            Protocol::Gre,
            &gre_packet(gre::Protocol::Erspan, None, Some(1), &ii),
        );
        assert_eq!(
            d.decap_ip(&bad, 0),
            Outcome::Malformed(Reason {
                layer: Layer::ErspanII,
                what: "version"
            })
        );
        assert_eq!(
            d.decap_ip(&[], 0),
            Outcome::Malformed(Reason {
                layer: Layer::Ipv4,
                what: "truncated"
            })
        );
    }

    /// GRE-TEB with a checksum computed for sequence number 0 and sent with `seq` (what Open
    /// vSwitch's userspace datapath does with `csum=true` and `seq=true`).
    fn stale_checksum_teb(seq: u32) -> Vec<u8> {
        let repr = gre::Repr {
            protocol: gre::Protocol::TransparentEthernet,
            checksum: true,
            key: Some(31),
            sequence: Some(0),
        };
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit(&mut gre::Packet::new_unchecked(&mut b[..]));
        b.extend_from_slice(&INNER);
        let mut p = gre::Packet::new_unchecked(&mut b[..]);
        p.fill_checksum();
        p.set_sequence(seq);
        b
    }

    #[test]
    fn bad_gre_checksum_is_kept_and_flagged_unless_strict() {
        let src = IpAddr::from([10, 0, 0, 5]);
        let good = stale_checksum_teb(0);
        let stale = stale_checksum_teb(1);
        let Outcome::Mirrored(m) = decap_gre(src, &good) else {
            panic!("a verifying checksum")
        };
        assert!(!m.meta.gre_checksum_bad);
        let Outcome::Mirrored(m) = decap_gre(src, &stale) else {
            panic!("a bad checksum keeps the frame")
        };
        assert!(m.meta.gre_checksum_bad);
        assert_eq!((m.key.kind, m.key.id, m.frame), (Kind::Gre, 31, &INNER[..]));
        assert_eq!(m.meta.seq, Some(1));

        let bad_checksum = Outcome::Malformed(Reason {
            layer: Layer::Gre,
            what: "checksum",
        });
        let pkt = ipv4([10, 0, 0, 5], Protocol::Gre, &stale);
        for strict in [false, true] {
            let mut d = Decapsulator::new(Config {
                strict_gre_checksum: strict,
                ..Config::default()
            });
            for outcome in [d.decap_gre(src, &stale), d.decap_ip(&pkt, 0)] {
                match outcome {
                    Outcome::Mirrored(m) if !strict => assert!(m.meta.gre_checksum_bad),
                    o if strict => assert_eq!(o, bad_checksum),
                    o => panic!("strict={strict}: {o:?}"),
                }
            }
            // A checksum that verifies is never refused.
            assert!(matches!(d.decap_gre(src, &good), Outcome::Mirrored(_)));
        }
    }

    #[test]
    fn udp_encapsulations() {
        let ports = Ports::default();
        let src = IpAddr::from([10, 0, 0, 7]);
        let mut vx = vec![0u8; 8];
        vxlan::Repr {
            vni: vxlan::Vni::try_new(100).unwrap(),
        }
        .emit(&mut vxlan::Packet::new_unchecked(&mut vx[..]));
        vx.extend_from_slice(&INNER);
        let Outcome::Mirrored(m) = decap_udp(&ports, src, 4789, &vx) else {
            panic!()
        };
        assert_eq!(
            m.key,
            SourceKey {
                src,
                kind: Kind::Vxlan,
                id: 100
            }
        );
        assert_eq!(m.key.to_string(), "10.0.0.7 vxlan vni 100");

        let mut tz = vec![1, 0, 0, 1, 1];
        tz.extend_from_slice(&INNER);
        let Outcome::Mirrored(m) = decap_udp(&ports, src, 37008, &tz) else {
            panic!()
        };
        assert_eq!(m.key.to_string(), "10.0.0.7 tzsp");
        assert_eq!(m.frame, INNER);
        let keepalive = [1, 4, 0, 1, 1];
        assert_eq!(
            decap_udp(&ports, src, 37008, &keepalive),
            Outcome::NotMirror(NotMirror::TzspOther)
        );

        let ge = geneve::Repr {
            oam: false,
            critical: false,
            protocol: geneve::PROTOCOL_ETHERNET,
            vni: vxlan::Vni::try_new(5).unwrap(),
            options: vec![0, 1, 2, 1, 9, 9, 9, 9],
        };
        let mut g = vec![0u8; ge.buffer_len()];
        ge.emit(&mut geneve::Packet::new_unchecked(&mut g[..]));
        g.extend_from_slice(&INNER);
        let Outcome::Mirrored(m) = decap_udp(&ports, src, 6081, &g) else {
            panic!()
        };
        assert_eq!(
            (m.key.kind, m.key.id, m.frame),
            (Kind::Geneve, 5, &INNER[..])
        );
        assert_eq!(
            decap_udp(&ports, src, 9999, &g),
            Outcome::NotMirror(NotMirror::UdpOther)
        );
    }

    #[test]
    fn fragmented_outer_ipv4() {
        let mut d = Decapsulator::new(Config::default());
        let body = gre_packet(
            gre::Protocol::TransparentEthernet,
            Some(1),
            None,
            &[0xab; 100],
        );
        let whole = ipv4([10, 0, 0, 9], Protocol::Gre, &body);
        let (h, payload) = whole.split_at(20);
        let frag = |off: usize, more: bool, part: &[u8]| {
            let mut b = h.to_vec();
            b[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
            let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
            b[6..8].copy_from_slice(&fo.to_be_bytes());
            let mut p = ipv4::Packet::new_unchecked(&mut b[..]);
            p.fill_checksum();
            b.extend_from_slice(part);
            b
        };
        let f1 = frag(0, true, &payload[..56]);
        let f2 = frag(56, false, &payload[56..]);
        assert_eq!(d.decap_ip(&f1, 0), Outcome::Held);
        let Outcome::Mirrored(m) = d.decap_ip(&f2, 1) else {
            panic!()
        };
        assert_eq!(m.frame, &[0xab; 100][..]);
        assert_eq!(d.defrag_stats().reassembled, 1);
    }

    #[test]
    fn link_types_carrying_ip() {
        let ip = ipv4([1, 1, 1, 1], Protocol::Tcp, &[0; 20]);
        let eth = [&INNER[..12], &[0x81, 0x00, 0x00, 0x05, 0x08, 0x00][..], &ip].concat();
        assert_eq!(
            link_payload(LinkType::Ethernet, &eth).unwrap(),
            Some(&ip[..])
        );
        let mut sll = vec![0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        assert_eq!(
            link_payload(LinkType::LinuxSll, &sll).unwrap(),
            Some(&ip[..])
        );
        let null = [&2u32.to_le_bytes()[..], &ip].concat();
        assert_eq!(link_payload(LinkType::Null, &null).unwrap(), Some(&ip[..]));
        let lo = [&2u32.to_be_bytes()[..], &ip].concat();
        assert_eq!(link_payload(LinkType::Loop, &lo).unwrap(), Some(&ip[..]));
        assert!(link_payload(LinkType::Other(147), &ip).is_err());
    }
}
