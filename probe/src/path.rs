//! Which way a collector's frames go: the decision, from what the kernel says about the route,
//! the egress interface and the next hop (read over rtnetlink by [`crate::route`]). Pure:
//! facts in, a [`Path`] out.
//!
//! The fast path (complete frames through a transmit ring) needs an Ethernet interface that is
//! up, a unicast route with a source address, and the next hop's MAC address. Anything else is
//! sent through the raw socket, where the kernel does the IP output, and the reason says why.
//! A next hop whose neighbour entry is stale is still used (the kernel would use it too), but
//! marked for confirmation: one datagram through the kernel makes it check the entry again.

use std::fmt;
use std::net::IpAddr;

/// How the probe sends: `auto` takes the fast path wherever it can.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SendMode {
    #[default]
    Auto,
    Fast,
    Raw,
}

impl SendMode {
    pub fn parse(s: &str) -> Result<SendMode, String> {
        match s {
            "auto" => Ok(SendMode::Auto),
            "fast" => Ok(SendMode::Fast),
            "raw" => Ok(SendMode::Raw),
            other => Err(format!("{other:?} is not a send path: auto, fast or raw")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SendMode::Auto => "auto",
            SendMode::Fast => "fast",
            SendMode::Raw => "raw",
        }
    }
}

/// The route the kernel picks for the collector (`ip route get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFacts {
    pub kind: RouteKind,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub pref_src: Option<IpAddr>,
    /// The route's MTU metric, or a path MTU learnt from ICMP.
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    /// The collector is an address of this host.
    Local,
    /// Blackhole, unreachable, prohibit, throw.
    Refused,
    Other,
}

/// The egress interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `bond`, `vlan`...); none for a physical NIC.
    pub kind: Option<String>,
    /// `ARPHRD_*`.
    pub link_type: u16,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    /// Carrier (`IFF_LOWER_UP`).
    pub lower_up: bool,
    pub loopback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighState {
    Incomplete,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    NoArp,
    Permanent,
    None,
}

impl NeighState {
    pub fn name(self) -> &'static str {
        match self {
            NeighState::Incomplete => "INCOMPLETE",
            NeighState::Reachable => "REACHABLE",
            NeighState::Stale => "STALE",
            NeighState::Delay => "DELAY",
            NeighState::Probe => "PROBE",
            NeighState::Failed => "FAILED",
            NeighState::NoArp => "NOARP",
            NeighState::Permanent => "PERMANENT",
            NeighState::None => "NONE",
        }
    }
}

/// The next hop's neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighFacts {
    pub state: NeighState,
    pub mac: Option<[u8; 6]>,
}

/// Everything the fast path needs for one collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPath {
    pub ifindex: u32,
    pub interface: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The gateway, or the collector itself when it is on the link.
    pub next_hop: IpAddr,
    /// Path MTU: the route's, else the interface's.
    pub mtu: u32,
    /// The interface's MTU: the longest IP datagram the transmit ring may carry.
    pub link_mtu: u32,
    /// The neighbour entry is stale: send one datagram through the kernel so it checks it.
    pub confirm: bool,
}

/// Why a collector's frames go through the raw socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// `--send-path raw`.
    Forced,
    /// Not resolved yet.
    Pending,
    /// rtnetlink could not be read.
    Netlink(String),
    NoRoute(String),
    /// The collector is an address of this host.
    Local,
    NoSource,
    LinkDown(String),
    BondWithoutMember(String),
    Loopback(String),
    NotEthernet {
        interface: String,
        link_type: u16,
    },
    Tunnel {
        interface: String,
        kind: String,
    },
    UnsupportedKind {
        interface: String,
        kind: String,
    },
    Unresolved {
        next_hop: IpAddr,
        state: NeighState,
    },
}

impl Fallback {
    /// A stable short name (a Prometheus label value).
    pub fn code(&self) -> &'static str {
        match self {
            Fallback::Forced => "forced",
            Fallback::Pending => "pending",
            Fallback::Netlink(_) => "netlink_error",
            Fallback::NoRoute(_) => "no_route",
            Fallback::Local => "local",
            Fallback::NoSource => "no_source",
            Fallback::LinkDown(_) => "link_down",
            Fallback::BondWithoutMember(_) => "bond_without_member",
            Fallback::Loopback(_) => "loopback",
            Fallback::NotEthernet { .. } => "not_ethernet",
            Fallback::Tunnel { .. } => "tunnel",
            Fallback::UnsupportedKind { .. } => "unsupported_kind",
            Fallback::Unresolved { .. } => "next_hop_unresolved",
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::Forced => write!(f, "raw socket path forced (--send-path raw)"),
            Fallback::Pending => write!(f, "route not resolved yet"),
            Fallback::Netlink(e) => write!(f, "rtnetlink: {e}"),
            Fallback::NoRoute(why) => write!(f, "no route: {why}"),
            Fallback::Local => write!(f, "the collector is an address of this host"),
            Fallback::NoSource => write!(f, "the route gives no source address"),
            Fallback::LinkDown(i) => write!(f, "{i} is down"),
            Fallback::BondWithoutMember(i) => write!(f, "bond {i} has no usable member"),
            Fallback::Loopback(i) => write!(f, "{i} is a loopback interface"),
            Fallback::NotEthernet {
                interface,
                link_type,
            } => write!(f, "{interface} is not Ethernet (link type {link_type})"),
            Fallback::Tunnel { interface, kind } => write!(f, "{interface} is a {kind} tunnel"),
            Fallback::UnsupportedKind { interface, kind } => {
                write!(
                    f,
                    "{interface} is a {kind} interface, which the fast path does not serve"
                )
            }
            Fallback::Unresolved { next_hop, state } => {
                write!(f, "next hop {next_hop} unresolved ({})", state.name())
            }
        }
    }
}

/// The way to one collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    Fast(FastPath),
    Raw(Fallback),
}

impl Path {
    pub fn fast(&self) -> Option<&FastPath> {
        match self {
            Path::Fast(f) => Some(f),
            Path::Raw(_) => None,
        }
    }
}

/// Interface kinds whose transmit takes a complete Ethernet frame and sends it on as it is (a
/// VLAN device adds its tag; a bond or team picks a member).
const SERVED_KINDS: &[&str] = &[
    "veth", "bridge", "bond", "team", "vlan", "macvlan", "macvtap", "tun",
];
/// Ethernet-like interfaces that encapsulate again.
const TUNNEL_KINDS: &[&str] = &[
    "vxlan",
    "geneve",
    "gretap",
    "ip6gretap",
    "erspan",
    "ip6erspan",
    "bareudp",
];
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;

/// The path to `dst` from the route the kernel picks, its egress interface and the next hop's
/// neighbour entry (`None`: no entry).
pub fn decide(
    dst: IpAddr,
    route: &RouteFacts,
    link: &LinkFacts,
    neigh: Option<&NeighFacts>,
) -> Path {
    let raw = Path::Raw;
    match route.kind {
        RouteKind::Unicast => {}
        RouteKind::Local => return raw(Fallback::Local),
        RouteKind::Refused | RouteKind::Other => {
            return raw(Fallback::NoRoute(
                "the route refuses the destination".into(),
            ));
        }
    }
    let name = || link.name.clone();
    if link.loopback || link.link_type == ARPHRD_LOOPBACK {
        return raw(Fallback::Loopback(name()));
    }
    if link.link_type != ARPHRD_ETHER {
        return raw(Fallback::NotEthernet {
            interface: name(),
            link_type: link.link_type,
        });
    }
    if let Some(kind) = link.kind.as_deref() {
        if TUNNEL_KINDS.contains(&kind) {
            return raw(Fallback::Tunnel {
                interface: name(),
                kind: kind.into(),
            });
        }
        if !SERVED_KINDS.contains(&kind) {
            return raw(Fallback::UnsupportedKind {
                interface: name(),
                kind: kind.into(),
            });
        }
    }
    if !link.up || !link.lower_up {
        return raw(if link.up && link.kind.as_deref() == Some("bond") {
            Fallback::BondWithoutMember(name())
        } else {
            Fallback::LinkDown(name())
        });
    }
    let Some(src_mac) = link.mac else {
        return raw(Fallback::NotEthernet {
            interface: name(),
            link_type: link.link_type,
        });
    };
    let Some(src) = route.pref_src.filter(|s| s.is_ipv6() == dst.is_ipv6()) else {
        return raw(Fallback::NoSource);
    };
    let next_hop = route.gateway.unwrap_or(dst);
    let unresolved = |state| raw(Fallback::Unresolved { next_hop, state });
    let Some(n) = neigh else {
        return unresolved(NeighState::None);
    };
    let confirm = match n.state {
        NeighState::Reachable
        | NeighState::Permanent
        | NeighState::NoArp
        | NeighState::Delay
        | NeighState::Probe => false,
        NeighState::Stale => true,
        NeighState::Incomplete | NeighState::Failed | NeighState::None => {
            return unresolved(n.state);
        }
    };
    let Some(dst_mac) = n.mac.filter(|m| *m != [0; 6]) else {
        return unresolved(n.state);
    };
    let mtu = route
        .mtu
        .filter(|m| *m > 0)
        .map_or(link.mtu, |m| m.min(link.mtu));
    Path::Fast(FastPath {
        ifindex: link.index,
        interface: name(),
        src_mac,
        dst_mac,
        src,
        dst,
        next_hop,
        mtu,
        link_mtu: link.mtu,
        confirm,
    })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: &str = "10.9.9.2";
    const GW: &str = "10.9.1.254";

    fn route() -> RouteFacts {
        RouteFacts {
            kind: RouteKind::Unicast,
            oif: Some(3),
            gateway: Some(GW.parse().expect("gw")),
            pref_src: Some("10.9.1.1".parse().expect("src")),
            mtu: None,
        }
    }

    fn link() -> LinkFacts {
        LinkFacts {
            index: 3,
            name: "up0".into(),
            kind: Some("veth".into()),
            link_type: 1,
            mac: Some([2, 0, 0, 0, 0, 1]),
            mtu: 9000,
            up: true,
            lower_up: true,
            loopback: false,
        }
    }

    fn neigh(state: NeighState) -> NeighFacts {
        NeighFacts {
            state,
            mac: Some([2, 0, 0, 0, 0, 0xfe]),
        }
    }

    fn dst() -> IpAddr {
        DST.parse().expect("dst")
    }

    #[test]
    fn a_resolved_gateway_on_ethernet_is_fast() {
        let p = decide(
            dst(),
            &route(),
            &link(),
            Some(&neigh(NeighState::Reachable)),
        );
        let f = p.fast().expect("fast");
        assert_eq!(f.dst_mac, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(f.src_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.next_hop, GW.parse::<IpAddr>().expect("gw"));
        assert_eq!((f.mtu, f.link_mtu, f.confirm), (9000, 9000, false));
        assert_eq!(f.interface, "up0");
        // On the link: the collector is its own next hop. A route MTU below the link's wins.
        let mut r = route();
        r.gateway = None;
        r.mtu = Some(1400);
        let f = decide(dst(), &r, &link(), Some(&neigh(NeighState::Permanent)));
        let f = f.fast().expect("fast");
        assert_eq!((f.next_hop, f.mtu, f.link_mtu), (dst(), 1400, 9000));
    }

    #[test]
    fn a_stale_neighbour_is_used_and_confirmed() {
        let p = decide(dst(), &route(), &link(), Some(&neigh(NeighState::Stale)));
        assert!(p.fast().expect("fast").confirm);
        for s in [NeighState::Delay, NeighState::Probe, NeighState::NoArp] {
            assert!(
                !decide(dst(), &route(), &link(), Some(&neigh(s)))
                    .fast()
                    .expect("fast")
                    .confirm
            );
        }
    }

    #[test]
    fn every_fallback_says_why() {
        let gw: IpAddr = GW.parse().expect("gw");
        let cases: Vec<(RouteFacts, LinkFacts, Option<NeighFacts>, Fallback)> = vec![
            (
                route(),
                link(),
                None,
                Fallback::Unresolved {
                    next_hop: gw,
                    state: NeighState::None,
                },
            ),
            (
                route(),
                link(),
                Some(neigh(NeighState::Failed)),
                Fallback::Unresolved {
                    next_hop: gw,
                    state: NeighState::Failed,
                },
            ),
            (
                route(),
                link(),
                Some(neigh(NeighState::Incomplete)),
                Fallback::Unresolved {
                    next_hop: gw,
                    state: NeighState::Incomplete,
                },
            ),
            (
                route(),
                link(),
                Some(NeighFacts {
                    state: NeighState::Reachable,
                    mac: None,
                }),
                Fallback::Unresolved {
                    next_hop: gw,
                    state: NeighState::Reachable,
                },
            ),
            (
                RouteFacts {
                    kind: RouteKind::Local,
                    ..route()
                },
                link(),
                None,
                Fallback::Local,
            ),
            (
                RouteFacts {
                    kind: RouteKind::Refused,
                    ..route()
                },
                link(),
                None,
                Fallback::NoRoute("the route refuses the destination".into()),
            ),
            (
                RouteFacts {
                    pref_src: None,
                    ..route()
                },
                link(),
                Some(neigh(NeighState::Reachable)),
                Fallback::NoSource,
            ),
            (
                RouteFacts {
                    pref_src: Some("fd00::1".parse().expect("v6")),
                    ..route()
                },
                link(),
                Some(neigh(NeighState::Reachable)),
                Fallback::NoSource,
            ),
            (
                route(),
                LinkFacts {
                    lower_up: false,
                    ..link()
                },
                None,
                Fallback::LinkDown("up0".into()),
            ),
            (
                route(),
                LinkFacts {
                    up: false,
                    ..link()
                },
                None,
                Fallback::LinkDown("up0".into()),
            ),
            (
                route(),
                LinkFacts {
                    kind: Some("bond".into()),
                    lower_up: false,
                    ..link()
                },
                None,
                Fallback::BondWithoutMember("up0".into()),
            ),
            (
                route(),
                LinkFacts {
                    loopback: true,
                    link_type: 772,
                    ..link()
                },
                None,
                Fallback::Loopback("up0".into()),
            ),
            (
                route(),
                LinkFacts {
                    kind: Some("wireguard".into()),
                    link_type: 65534,
                    ..link()
                },
                None,
                Fallback::NotEthernet {
                    interface: "up0".into(),
                    link_type: 65534,
                },
            ),
            (
                route(),
                LinkFacts {
                    kind: Some("vxlan".into()),
                    ..link()
                },
                None,
                Fallback::Tunnel {
                    interface: "up0".into(),
                    kind: "vxlan".into(),
                },
            ),
            (
                route(),
                LinkFacts {
                    kind: Some("ipvlan".into()),
                    ..link()
                },
                None,
                Fallback::UnsupportedKind {
                    interface: "up0".into(),
                    kind: "ipvlan".into(),
                },
            ),
        ];
        for (r, l, n, want) in cases {
            let got = decide(dst(), &r, &l, n.as_ref());
            assert_eq!(got, Path::Raw(want.clone()), "{want}");
            assert!(!want.to_string().is_empty());
            assert!(
                want.code()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
        // Served kinds: a VLAN device tags the frame itself, a bond with a member picks it.
        for kind in ["vlan", "bond", "bridge", "team", "macvlan"] {
            let l = LinkFacts {
                kind: Some(kind.into()),
                ..link()
            };
            assert!(
                decide(dst(), &route(), &l, Some(&neigh(NeighState::Reachable)))
                    .fast()
                    .is_some(),
                "{kind}"
            );
        }
        // A physical NIC has no kind.
        let l = LinkFacts {
            kind: None,
            ..link()
        };
        assert!(
            decide(dst(), &route(), &l, Some(&neigh(NeighState::Reachable)))
                .fast()
                .is_some()
        );
    }

    #[test]
    fn send_modes_parse() {
        for m in [SendMode::Auto, SendMode::Fast, SendMode::Raw] {
            assert_eq!(SendMode::parse(m.name()), Ok(m));
        }
        assert!(
            SendMode::parse("quick")
                .expect_err("bad")
                .contains("auto, fast or raw")
        );
    }
}
