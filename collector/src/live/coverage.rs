//! One packet, one copy. An input that reads an interface below the IP stack (an AF_PACKET
//! ring sees every frame arriving on its interface) would read a second time what the socket
//! inputs receive through that interface when it holds the collector's addresses. Each such
//! input says what it covers ([`Coverage`]: an interface, and every destination or only some);
//! each socket input then carries a kernel filter that leaves those packets unread
//! ([`socket_program`]). The socket stays open and bound, so the kernel still delivers to it and
//! answers no sender with ICMP protocol or port unreachable; it only queues nothing of what the
//! other input already reads.
//!
//! The filter matches on the arrival interface (`SKF_AD_IFINDEX`) and, for a coverage of some
//! destinations, on the destination address; the interface index is looked up again when a
//! ring reopens a vanished interface ([`Covered::set_ifindex`]), and the socket inputs
//! re-attach their filter.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::input::InputKind;

/// A local destination of mirror traffic: GRE to an address, or UDP to an address and port.
/// An unspecified address stands for every local address of its family (for UDP, of both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dest {
    Gre(IpAddr),
    Udp(IpAddr, u16),
}

/// Which packets arriving on an interface an input reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dests {
    /// Every one (an AF_PACKET ring).
    All,
    /// Those to these destinations, every one of them (an input that takes them before the
    /// IP stack must name only what it never passes on).
    Only(Vec<Dest>),
}

/// What one input reads on one interface that the socket inputs would read too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub interface: String,
    /// 0 while the interface does not exist.
    pub ifindex: u32,
    pub dests: Dests,
}

impl InputKind {
    /// The interface this input reads below the IP stack and what of it, if it does.
    pub fn covers(&self) -> Option<(&str, Dests)> {
        match self {
            InputKind::Interface { name, .. } => Some((name, Dests::All)),
            InputKind::GreV4(_) | InputKind::GreV6(_) | InputKind::Udp(_) => None,
            // What the XDP program steers never reaches the stack, and what it passes (too
            // long, no socket on the queue, a datagram left to the kernel) only the sockets
            // read: nothing for them to leave.
            InputKind::Xdp { .. } => None,
        }
    }
}

/// The coverages of `inputs`, one per interface, with the interface index `ifindex` gives
/// (0 when it has none).
pub fn coverages(inputs: &[InputKind], ifindex: impl Fn(&str) -> Option<u32>) -> Vec<Coverage> {
    let mut out: Vec<Coverage> = Vec::new();
    for (interface, dests) in inputs.iter().filter_map(InputKind::covers) {
        match out.iter_mut().find(|c| c.interface == interface) {
            Some(c) => c.dests = union(&c.dests, &dests),
            None => out.push(Coverage {
                interface: interface.to_string(),
                ifindex: ifindex(interface).unwrap_or(0),
                dests,
            }),
        }
    }
    out
}

fn union(a: &Dests, b: &Dests) -> Dests {
    match (a, b) {
        (Dests::Only(x), Dests::Only(y)) => {
            let mut all: Vec<Dest> = x.iter().chain(y).copied().collect();
            all.sort();
            all.dedup();
            Dests::Only(all)
        }
        _ => Dests::All,
    }
}

/// The coverages of a running collector, shared by its input threads: a ring that reopens its
/// interface sets the new index, and the socket inputs see the generation change.
#[derive(Debug, Default)]
pub struct Covered {
    generation: AtomicU64,
    list: Mutex<Vec<Coverage>>,
}

impl Covered {
    pub fn new(list: Vec<Coverage>) -> Covered {
        Covered {
            generation: AtomicU64::new(0),
            list: Mutex::new(list),
        }
    }

    /// Changes whenever a coverage does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn list(&self) -> Vec<Coverage> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Interface `name` has index `ifindex` now.
    pub fn set_ifindex(&self, name: &str, ifindex: u32) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for c in list.iter_mut().filter(|c| c.interface == name) {
            changed |= c.ifindex != ifindex;
            c.ifindex = ifindex;
        }
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// What a socket input leaves to the other inputs, said once at start.
pub fn describe(c: &Coverage) -> String {
    match &c.dests {
        Dests::All => format!(
            "the socket inputs leave every packet arriving on {} to its AF_PACKET input: one copy of each",
            c.interface
        ),
        Dests::Only(d) => format!(
            "the socket inputs leave packets arriving on {} for {d:?} to the input that reads them: one copy of each",
            c.interface
        ),
    }
}

/// Which addresses a socket of kind `socket` receives that coverage `dests` reads:
/// `None` for none, `Some(vec![])` for every one.
fn addrs_for(socket: &InputKind, dests: &Dests) -> Option<Vec<IpAddr>> {
    let list = match dests {
        Dests::All => return Some(Vec::new()),
        Dests::Only(list) => list,
    };
    let mut addrs = Vec::new();
    for d in list {
        let addr = match (socket, d) {
            (InputKind::GreV4(_), Dest::Gre(a)) if a.is_ipv4() => *a,
            (InputKind::GreV6(_), Dest::Gre(a)) if a.is_ipv6() => *a,
            (InputKind::Udp(sa), Dest::Udp(a, p)) if *p == sa.port() => *a,
            _ => continue,
        };
        if addr.is_unspecified() {
            return Some(Vec::new());
        }
        addrs.push(addr);
    }
    (!addrs.is_empty()).then_some(addrs)
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// `SKF_AD_OFF + SKF_AD_IFINDEX`: the index of the interface the packet arrived on.
const AD_IFINDEX: u32 = 0xffff_f000 + 8;
/// `SKF_NET_OFF`: loads relative to the network header, whatever the socket's data starts at
/// (the IPv4 header on a raw IPv4 socket, GRE on a raw IPv6 one, UDP's payload on UDP).
const NET_OFF: u32 = 0xfff0_0000;

/// One instruction with its jump targets still symbolic.
#[derive(Debug, Clone, Copy)]
enum Asm {
    Insn(u16, u32),
    /// `jeq #k`: go on when equal, else to the label.
    JeqElse(u32, usize),
    Label(usize),
}

/// The filter for socket input `socket`: it drops what `covers` read, accepts the rest whole.
/// `None` when nothing covered reaches this socket (no filter is needed), or when the program
/// would not fit the jump range of classic BPF (the socket then reads everything: a warning).
pub fn socket_program(socket: &InputKind, covers: &[Coverage]) -> Option<Vec<libc::sock_filter>> {
    let mut asm = Vec::new();
    let mut label = 0;
    for c in covers.iter().filter(|c| c.ifindex != 0) {
        let Some(addrs) = addrs_for(socket, &c.dests) else {
            continue;
        };
        let next = label;
        label += 1;
        asm.push(Asm::Insn(LD_W_ABS, AD_IFINDEX));
        asm.push(Asm::JeqElse(c.ifindex, next));
        if addrs.is_empty() {
            asm.push(Asm::Insn(RET_K, 0));
        }
        for a in addrs {
            let skip = label;
            label += 1;
            // The IP version first: a dual-stack UDP socket gets both.
            let (version, words): (u32, Vec<(u32, u32)>) = match a {
                IpAddr::V4(v4) => (0x40, vec![(16, u32::from(v4))]),
                IpAddr::V6(v6) => {
                    let o = v6.octets();
                    let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                    (
                        0x60,
                        (0..4).map(|i| (24 + 4 * i as u32, w(4 * i))).collect(),
                    )
                }
            };
            asm.push(Asm::Insn(LD_B_ABS, NET_OFF));
            asm.push(Asm::Insn(ALU_AND_K, 0xf0));
            asm.push(Asm::JeqElse(version, skip));
            for (off, word) in words {
                asm.push(Asm::Insn(LD_W_ABS, NET_OFF + off));
                asm.push(Asm::JeqElse(word, skip));
            }
            asm.push(Asm::Insn(RET_K, 0));
            asm.push(Asm::Label(skip));
        }
        asm.push(Asm::Label(next));
    }
    if asm.is_empty() {
        return None;
    }
    asm.push(Asm::Insn(RET_K, u32::MAX));
    assemble(&asm)
}

/// Resolves labels to relative jumps; `None` when one is beyond 255 instructions.
fn assemble(asm: &[Asm]) -> Option<Vec<libc::sock_filter>> {
    let mut at = Vec::new();
    let mut pc = 0usize;
    for a in asm {
        match a {
            Asm::Label(l) => {
                if at.len() <= *l {
                    at.resize(l + 1, 0);
                }
                at[*l] = pc;
            }
            _ => pc += 1,
        }
    }
    let mut out = Vec::with_capacity(pc);
    for a in asm {
        let insn = |code, jf, k| libc::sock_filter { code, jt: 0, jf, k };
        match *a {
            Asm::Insn(code, k) => out.push(insn(code, 0, k)),
            Asm::JeqElse(k, l) => {
                let jf = u8::try_from(at[l] - out.len() - 1).ok()?;
                out.push(insn(JEQ_K, jf, k));
            }
            Asm::Label(_) => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// Runs the instructions [`socket_program`] emits on a packet whose network header is
    /// `net`, arriving on `ifindex`: the bytes kept (0: dropped).
    fn run(program: &[libc::sock_filter], ifindex: u32, net: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            match i.code {
                LD_W_ABS if i.k == AD_IFINDEX => a = ifindex,
                LD_W_ABS | LD_B_ABS => {
                    let off = (i.k - NET_OFF) as usize;
                    let n = if i.code == LD_W_ABS { 4 } else { 1 };
                    let Some(b) = net.get(off..off + n) else {
                        return 0;
                    };
                    a = b.iter().fold(0, |acc, v| acc << 8 | u32::from(*v));
                }
                ALU_AND_K => a &= i.k,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                c => panic!("instruction {c:#x}"),
            }
        }
    }

    fn v4_header(dst: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 47, 0, 0, 10, 0, 0, 1];
        h.extend(dst);
        h
    }

    fn v6_header(dst: &str) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 8, 47, 64];
        h.extend([0u8; 16]);
        let d: std::net::Ipv6Addr = dst.parse().unwrap();
        h.extend(d.octets());
        h
    }

    fn ring(name: &str, ifindex: u32) -> Coverage {
        Coverage {
            interface: name.into(),
            ifindex,
            dests: Dests::All,
        }
    }

    const GRE4: InputKind = InputKind::GreV4(std::net::Ipv4Addr::UNSPECIFIED);

    #[test]
    fn a_ring_takes_every_packet_of_its_interface_from_every_socket() {
        let covers = [ring("col0", 7), ring("mon1", 9)];
        let udp = InputKind::Udp("[::]:4789".parse::<SocketAddr>().unwrap());
        for socket in [GRE4, udp] {
            let p = socket_program(&socket, &covers).expect("a filter");
            let pkt = v4_header([10, 0, 0, 2]);
            assert_eq!(run(&p, 7, &pkt), 0, "{socket:?} on col0");
            assert_eq!(run(&p, 9, &pkt), 0, "{socket:?} on mon1");
            assert_eq!(run(&p, 3, &pkt), u32::MAX, "{socket:?} elsewhere");
        }
    }

    #[test]
    fn no_filter_without_a_coverage_that_reaches_the_socket() {
        assert!(socket_program(&GRE4, &[]).is_none());
        // An interface that does not exist yet has no index to match.
        assert!(socket_program(&GRE4, &[ring("gone", 0)]).is_none());
        let udp_only = Coverage {
            interface: "eth1".into(),
            ifindex: 4,
            dests: Dests::Only(vec![Dest::Udp("0.0.0.0".parse().unwrap(), 4789)]),
        };
        assert!(socket_program(&GRE4, std::slice::from_ref(&udp_only)).is_none());
        let geneve = InputKind::Udp("[::]:6081".parse::<SocketAddr>().unwrap());
        assert!(socket_program(&geneve, &[udp_only]).is_none());
    }

    #[test]
    fn a_coverage_of_some_destinations_leaves_the_others_to_the_sockets() {
        let covers = [Coverage {
            interface: "eth1".into(),
            ifindex: 4,
            dests: Dests::Only(vec![
                Dest::Gre("192.0.2.7".parse().unwrap()),
                Dest::Gre("2001:db8::7".parse().unwrap()),
                Dest::Udp("2001:db8::7".parse().unwrap(), 4789),
            ]),
        }];
        let p = socket_program(&GRE4, &covers).expect("a filter");
        assert_eq!(run(&p, 4, &v4_header([192, 0, 2, 7])), 0);
        assert_eq!(run(&p, 4, &v4_header([192, 0, 2, 8])), u32::MAX);
        assert_eq!(run(&p, 5, &v4_header([192, 0, 2, 7])), u32::MAX);
        let gre6 = InputKind::GreV6(std::net::Ipv6Addr::UNSPECIFIED);
        let p = socket_program(&gre6, &covers).expect("a filter");
        assert_eq!(run(&p, 4, &v6_header("2001:db8::7")), 0);
        assert_eq!(run(&p, 4, &v6_header("2001:db8::8")), u32::MAX);
        // A dual-stack UDP socket: an IPv4 packet is never read as an IPv6 address.
        let udp = InputKind::Udp("[::]:4789".parse::<SocketAddr>().unwrap());
        let p = socket_program(&udp, &covers).expect("a filter");
        assert_eq!(run(&p, 4, &v6_header("2001:db8::7")), 0);
        let mut v4 = v4_header([192, 0, 2, 7]);
        v4.extend(std::net::Ipv6Addr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7]).octets());
        assert_eq!(run(&p, 4, &v4), u32::MAX);
    }

    #[test]
    fn coverages_are_one_per_interface_and_follow_a_reopened_ring() {
        let kinds = [
            InputKind::Interface {
                name: "col0".into(),
                worker: 0,
                workers: 2,
            },
            InputKind::Interface {
                name: "col0".into(),
                worker: 1,
                workers: 2,
            },
            GRE4,
        ];
        let list = coverages(&kinds, |n| (n == "col0").then_some(7));
        assert_eq!(list, vec![ring("col0", 7)]);
        let covered = Covered::new(list);
        let g = covered.generation();
        covered.set_ifindex("col0", 7);
        assert_eq!(covered.generation(), g, "unchanged");
        covered.set_ifindex("col0", 12);
        assert_ne!(covered.generation(), g);
        let p = socket_program(&GRE4, &covered.list()).unwrap();
        assert_eq!(run(&p, 12, &v4_header([10, 0, 0, 2])), 0);
        assert_eq!(run(&p, 7, &v4_header([10, 0, 0, 2])), u32::MAX);
    }
}
