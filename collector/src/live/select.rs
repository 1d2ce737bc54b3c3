//! Which input reads each interface (`collect --input`). The socket inputs (raw GRE, UDP) always
//! run: they take loopback, interfaces that appear later, and whatever a faster input passes
//! on. On each interface that holds an address they listen on, a faster input is tried first:
//! AF_XDP (the mirror traffic never reaches the IP stack), else an AF_PACKET ring (the sockets
//! then leave that interface's packets to it, see [`super::coverage`]), else nothing.
//!
//! [`plan`] is the decision, pure: the host's facts (interfaces, this build, capabilities) and
//! the request in, per interface the inputs to try in order and why the faster ones were left
//! out. The shell ([`crate::collect`]) tries them (an attach or an open can still be refused:
//! another XDP program, a driver) and reports with [`start_line`] what each interface got.

use std::fmt;
use std::net::IpAddr;

use tapwire_netio::xdp::Dest;

/// `--input`: what to pick on the interfaces holding the listen addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputMode {
    /// The fastest that works: AF_XDP, else the ring, else the sockets.
    #[default]
    Auto,
    /// AF_XDP, else the sockets.
    Xdp,
    /// The ring, else the sockets.
    Ring,
    /// The sockets only.
    Sockets,
}

impl fmt::Display for InputMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputMode::Auto => "auto",
            InputMode::Xdp => "xdp",
            InputMode::Ring => "ring",
            InputMode::Sockets => "sockets",
        })
    }
}

/// An input that can read an interface, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pick {
    Xdp,
    Ring,
    Sockets,
}

impl fmt::Display for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pick::Xdp => "AF_XDP",
            Pick::Ring => "ring",
            Pick::Sockets => "sockets",
        })
    }
}

/// What the process may do (effective capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub net_admin: bool,
    pub net_raw: bool,
    /// CAP_BPF, or CAP_SYS_ADMIN which includes it.
    pub bpf: bool,
}

impl Caps {
    pub const ALL: Caps = Caps {
        net_admin: true,
        net_raw: true,
        bpf: true,
    };

    /// From the `CapEff:` mask of `/proc/self/status`.
    pub fn from_mask(mask: u64) -> Caps {
        const NET_ADMIN: u32 = 12;
        const NET_RAW: u32 = 13;
        const SYS_ADMIN: u32 = 21;
        const BPF: u32 = 39;
        let has = |bit: u32| mask & (1 << bit) != 0;
        Caps {
            net_admin: has(NET_ADMIN),
            net_raw: has(NET_RAW),
            bpf: has(BPF) || has(SYS_ADMIN),
        }
    }
}

/// What [`plan`] needs to know of the host.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub interfaces: Vec<tapwire_netio::xdp::LocalInterface>,
    /// This build holds the XDP program.
    pub xdp_program: bool,
    pub caps: Caps,
}

/// What was asked for: the mode, what the socket inputs listen on, and the interfaces the
/// command line names itself (`--xdp IF`, `--interface IF`), which the plan leaves alone.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub mode: InputMode,
    pub dests: Vec<Dest>,
    pub named: Vec<String>,
}

/// One interface's plan: the inputs to try in order (the sockets last, always there) and why
/// each faster one is not tried (`None`: none is, for a reason of the interface's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub interface: String,
    pub tries: Vec<Pick>,
    pub skipped: Vec<(Option<Pick>, String)>,
}

/// Why no XDP program is tried in a build without one.
const NO_PROGRAM: &str = "this build has no XDP program (clang was missing when it was built)";

/// Per interface holding a listen address (every address of the family for an unspecified
/// one), in name order, the inputs to try. Loopback keeps the sockets: XDP and a ring gain
/// nothing there. Interfaces the command line names are left out; `--input sockets` plans
/// nothing.
pub fn plan(host: &Host, req: &Request) -> Vec<Choice> {
    let faster: &[Pick] = match req.mode {
        InputMode::Auto => &[Pick::Xdp, Pick::Ring],
        InputMode::Xdp => &[Pick::Xdp],
        InputMode::Ring => &[Pick::Ring],
        InputMode::Sockets => return Vec::new(),
    };
    let mut out = Vec::new();
    for i in &host.interfaces {
        if req.named.contains(&i.name) || !i.addrs.iter().any(|a| listens(&req.dests, *a)) {
            continue;
        }
        let mut tries = Vec::new();
        let mut skipped = Vec::new();
        if let Some(why) = unfit(i) {
            skipped.push((None, why.to_string()));
        } else {
            for &p in faster {
                if p == Pick::Xdp && i.mtu > tapwire_netio::xdp::MAX_MTU {
                    skipped.push((Some(p), format!("MTU {}: frames over {} bytes would reach the sockets, out of order with the rest", i.mtu, tapwire_netio::xdp::MAX_STEERED_FRAME_BYTES)));
                    continue;
                }
                match refusal(p, host) {
                    Some(why) => skipped.push((Some(p), why.to_string())),
                    None => tries.push(p),
                }
            }
        }
        tries.push(Pick::Sockets);
        out.push(Choice {
            interface: i.name.clone(),
            tries,
            skipped,
        });
    }
    out
}

/// Whether a socket input of `dests` receives for local address `addr`: named, or unspecified
/// of its family (UDP on `::` takes IPv4 too: the UDP inputs bind dual-stack).
fn listens(dests: &[Dest], addr: IpAddr) -> bool {
    dests.iter().any(|d| {
        let (a, udp) = match d {
            Dest::Gre(a) => (a, false),
            Dest::Udp(a, _) => (a, true),
        };
        *a == addr
            || (a.is_unspecified()
                && (a.is_ipv4() == addr.is_ipv4() || (udp && a.is_ipv6() && addr.is_ipv4())))
    })
}

/// Why no faster input reads interface `i`, whatever the host.
fn unfit(i: &tapwire_netio::xdp::LocalInterface) -> Option<&'static str> {
    if i.loopback {
        Some("loopback: its traffic stays on the sockets")
    } else if !i.ethernet {
        Some("not an Ethernet interface")
    } else {
        None
    }
}

/// Why input `p` cannot run on this host, known before trying.
fn refusal(p: Pick, host: &Host) -> Option<&'static str> {
    match p {
        Pick::Xdp if !host.xdp_program => Some(NO_PROGRAM),
        Pick::Xdp if !(host.caps.bpf && host.caps.net_admin && host.caps.net_raw) => {
            Some("needs CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW (run as root)")
        }
        Pick::Ring if !host.caps.net_raw => Some("needs CAP_NET_RAW (run as root)"),
        _ => None,
    }
}

/// What one interface got in the end: the input, its mode (`native`, `generic`...), and why
/// each faster input is not it (left out by the plan, or refused when tried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub interface: String,
    pub pick: Pick,
    pub mode: Option<String>,
    pub not: Vec<(Option<Pick>, String)>,
}

impl Outcome {
    /// `AF_XDP (native)`, `ring (AF_XDP: another XDP program is attached)`,
    /// `sockets (loopback: ...)`.
    pub fn describe(&self) -> String {
        let mut s = self.pick.to_string();
        let mut why: Vec<String> = self.mode.iter().cloned().collect();
        why.extend(self.why_not());
        if !why.is_empty() {
            s.push_str(&format!(" ({})", why.join("; ")));
        }
        s
    }

    fn why_not(&self) -> impl Iterator<Item = String> + '_ {
        self.not.iter().map(|(p, r)| match p {
            Some(p) => format!("{p}: {r}"),
            None => r.clone(),
        })
    }

    /// Why this input reads the interface, for the API.
    pub fn reason(&self, mode: InputMode) -> String {
        let why: Vec<String> = self.why_not().collect();
        if why.is_empty() {
            return format!("--input {mode}: {}", self.pick);
        }
        format!("--input {mode}: {} ({})", self.pick, why.join("; "))
    }
}

/// The one start line: per interface what it got and why the faster inputs were not.
pub fn start_line(mode: InputMode, outcomes: &[Outcome]) -> String {
    if outcomes.is_empty() {
        return format!(
            "inputs (--input {mode}): the raw GRE and UDP sockets; no interface holds a listen address"
        );
    }
    let parts: Vec<String> = outcomes
        .iter()
        .map(|o| format!("{} {}", o.interface, o.describe()))
        .collect();
    format!(
        "inputs (--input {mode}): {}; the raw GRE and UDP sockets take the rest",
        parts.join(", ")
    )
}

/// The effective capabilities of this process (`CapEff` in `/proc/self/status`), all of them
/// when the file cannot be read (the attempt then says what is refused).
pub fn own_caps() -> Caps {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .map_or(Caps::ALL, Caps::from_mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_netio::xdp::LocalInterface;

    fn iface(name: &str, addrs: &[&str]) -> LocalInterface {
        LocalInterface {
            name: name.into(),
            loopback: name == "lo",
            ethernet: name != "lo" && name != "tun0",
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            mtu: 1500,
        }
    }

    #[test]
    fn a_jumbo_mtu_keeps_af_xdp_off_so_no_source_arrives_by_two_inputs() {
        let mut h = host();
        for i in &mut h.interfaces {
            i.mtu = 9000;
        }
        let req = Request {
            dests: vec![Dest::Gre("0.0.0.0".parse().unwrap())],
            ..Request::default()
        };
        let p = plan(&h, &req);
        let eth0 = p.iter().find(|c| c.interface == "eth0").unwrap();
        assert_eq!(eth0.tries, vec![Pick::Ring, Pick::Sockets]);
        assert!(
            eth0.skipped[0].1.starts_with("MTU 9000"),
            "{:?}",
            eth0.skipped
        );
        // At 1500 AF_XDP comes first.
        let p = plan(&host(), &req);
        let eth0 = p.iter().find(|c| c.interface == "eth0").unwrap();
        assert_eq!(eth0.tries[0], Pick::Xdp);
    }

    fn host() -> Host {
        Host {
            interfaces: vec![
                iface("eth0", &["10.0.0.2", "fe80::1"]),
                iface("eth1", &["192.0.2.7"]),
                iface("eth2", &[]),
                iface("lo", &["127.0.0.1", "::1"]),
                iface("tun0", &["10.9.0.1"]),
            ],
            xdp_program: true,
            caps: Caps::ALL,
        }
    }

    /// The collector's default listeners: GRE on 0.0.0.0 and ::, UDP on [::]:4789.
    fn defaults() -> Vec<Dest> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        vec![
            Dest::Gre(ip("0.0.0.0")),
            Dest::Gre(ip("::")),
            Dest::Udp(ip("::"), 4789),
        ]
    }

    fn req(mode: InputMode) -> Request {
        Request {
            mode,
            dests: defaults(),
            named: Vec::new(),
        }
    }

    fn tries(plan: &[Choice]) -> Vec<(&str, Vec<Pick>)> {
        plan.iter()
            .map(|c| (c.interface.as_str(), c.tries.clone()))
            .collect()
    }

    #[test]
    fn auto_tries_xdp_then_the_ring_on_every_interface_with_an_address() {
        let p = plan(&host(), &req(InputMode::Auto));
        use Pick::*;
        assert_eq!(
            tries(&p),
            vec![
                ("eth0", vec![Xdp, Ring, Sockets]),
                ("eth1", vec![Xdp, Ring, Sockets]),
                // Loopback and a non-Ethernet link keep the sockets, and say why.
                ("lo", vec![Sockets]),
                ("tun0", vec![Sockets]),
            ]
        );
        assert_eq!(
            p[2].skipped,
            vec![(
                None,
                "loopback: its traffic stays on the sockets".to_string()
            )]
        );
        assert_eq!(p[3].skipped[0].1, "not an Ethernet interface");
    }

    #[test]
    fn a_named_address_picks_only_its_interface() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = Request {
            mode: InputMode::Auto,
            dests: vec![Dest::Gre(ip("192.0.2.7")), Dest::Udp(ip("192.0.2.7"), 4789)],
            named: Vec::new(),
        };
        assert_eq!(
            tries(&plan(&host(), &r)),
            vec![("eth1", vec![Pick::Xdp, Pick::Ring, Pick::Sockets])]
        );
        // GRE on :: alone: the interfaces with IPv6 addresses (a link-local one counts).
        let r = Request {
            dests: vec![Dest::Gre(ip("::"))],
            ..r
        };
        let names: Vec<_> = plan(&host(), &r).into_iter().map(|c| c.interface).collect();
        assert_eq!(names, ["eth0", "lo"]);
        // UDP on [::] takes IPv4 too (dual-stack).
        assert!(listens(&[Dest::Udp(ip("::"), 4789)], ip("10.0.0.2")));
        assert!(!listens(&[Dest::Gre(ip("::"))], ip("10.0.0.2")));
        assert!(!listens(&[Dest::Udp(ip("0.0.0.0"), 4789)], ip("fe80::1")));
    }

    #[test]
    fn each_mode_tries_only_its_input_and_sockets_tries_none() {
        use Pick::*;
        let first = |mode| plan(&host(), &req(mode))[0].tries.clone();
        assert_eq!(first(InputMode::Xdp), vec![Xdp, Sockets]);
        assert_eq!(first(InputMode::Ring), vec![Ring, Sockets]);
        assert!(plan(&host(), &req(InputMode::Sockets)).is_empty());
    }

    #[test]
    fn named_interfaces_are_left_alone() {
        let r = Request {
            named: vec!["eth0".into(), "lo".into()],
            ..req(InputMode::Auto)
        };
        let names: Vec<_> = plan(&host(), &r).into_iter().map(|c| c.interface).collect();
        assert_eq!(names, ["eth1", "tun0"]);
        assert!(plan(&host(), &r).iter().all(|c| c.interface != "eth0"));
    }

    #[test]
    fn without_the_program_or_the_capabilities_it_says_why() {
        use Pick::*;
        let h = Host {
            xdp_program: false,
            ..host()
        };
        let p = plan(&h, &req(InputMode::Auto));
        assert_eq!(p[0].tries, vec![Ring, Sockets]);
        assert_eq!(p[0].skipped[0].0, Some(Xdp));
        assert!(p[0].skipped[0].1.contains("clang"));

        // CAP_NET_RAW alone (a probe-like service): the ring, not XDP.
        let h = Host {
            caps: Caps::from_mask(1 << 13),
            ..host()
        };
        let p = plan(&h, &req(InputMode::Auto));
        assert_eq!(p[0].tries, vec![Ring, Sockets]);
        assert!(p[0].skipped[0].1.contains("CAP_BPF"), "{:?}", p[0].skipped);

        // No capability at all: sockets, with both reasons.
        let h = Host {
            caps: Caps::default(),
            ..host()
        };
        let p = plan(&h, &req(InputMode::Auto));
        assert_eq!(p[0].tries, vec![Sockets]);
        assert_eq!(p[0].skipped.len(), 2);
        assert!(p[0].skipped[1].1.contains("CAP_NET_RAW"));
    }

    #[test]
    fn capabilities_come_from_the_effective_mask() {
        // root's full set (CapEff: 000001ffffffffff)
        assert_eq!(Caps::from_mask(0x1ff_ffff_ffff), Caps::ALL);
        // CAP_SYS_ADMIN stands for CAP_BPF on kernels before 5.8.
        let c = Caps::from_mask((1 << 21) | (1 << 12) | (1 << 13));
        assert_eq!(c, Caps::ALL);
        assert_eq!(Caps::from_mask(0), Caps::default());
    }

    #[test]
    fn the_start_line_says_per_interface_what_and_why() {
        let outcomes = vec![
            Outcome {
                interface: "eth0".into(),
                pick: Pick::Xdp,
                mode: Some("native".into()),
                not: Vec::new(),
            },
            Outcome {
                interface: "eth1".into(),
                pick: Pick::Ring,
                mode: None,
                not: vec![(Some(Pick::Xdp), "another XDP program is attached".into())],
            },
            Outcome {
                interface: "lo".into(),
                pick: Pick::Sockets,
                mode: None,
                not: vec![(None, "loopback: its traffic stays on the sockets".into())],
            },
        ];
        assert_eq!(
            start_line(InputMode::Auto, &outcomes),
            "inputs (--input auto): eth0 AF_XDP (native), \
             eth1 ring (AF_XDP: another XDP program is attached), \
             lo sockets (loopback: its traffic stays on the sockets); \
             the raw GRE and UDP sockets take the rest"
        );
        assert_eq!(outcomes[0].reason(InputMode::Auto), "--input auto: AF_XDP");
        assert_eq!(
            outcomes[1].reason(InputMode::Auto),
            "--input auto: ring (AF_XDP: another XDP program is attached)"
        );
        assert!(start_line(InputMode::Sockets, &[]).contains("no interface"));
    }
}
