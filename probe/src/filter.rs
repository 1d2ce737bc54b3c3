//! The kernel filter of a flow: classic BPF that the capture socket runs on every packet, so a
//! packet the flow does not want never reaches user space.
//!
//! It is three programs run one after the other, each of which can only refuse:
//!
//! 1. the direction (`in`/`out`), from the packet's `pkt_type` (an ancillary load,
//!    `SKF_AD_PKTTYPE`; libpcap cannot express it for a dead Ethernet capture);
//! 2. the probe's own tunnel traffic: GRE to any collector of the probe, so mirroring the
//!    uplink the tunnel leaves by never loops;
//! 3. the user's tcpdump expression, compiled by libpcap (the program `tcpdump -d` prints).
//!
//! They are compiled separately and chained ([`chain`]): every accepting `ret` of one becomes a
//! jump to the start of the next. Compiling one combined expression instead would let a `vlan`
//! keyword in the user's expression shift the offsets of the exclusion that follows it.

use std::net::IpAddr;

use pcap::{Capture, Linktype};
use tapwire_api_types::probe::Direction;
use tapwire_netio::bpf::{self, MAX_INSTRUCTIONS};

pub type Program = Vec<libc::sock_filter>;

/// What an accepting program returns: everything (the ring's snaplen lowers it).
pub const ACCEPT: u32 = 262_144;

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;
const CLASS_MASK: u16 = 0x07;
const RVAL_MASK: u16 = 0x18;
/// `SKF_AD_OFF + SKF_AD_PKTTYPE` (-0x1000 + 4 as an unsigned offset).
const SKF_AD_PKTTYPE: u32 = 0xffff_f000 + 4;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Compiles a tcpdump expression for an Ethernet link; the error is libpcap's message.
pub fn compile(expr: &str) -> Result<Program, String> {
    let dead = Capture::dead(Linktype::ETHERNET).map_err(|e| e.to_string())?;
    let program = dead.compile(expr, true).map_err(|e| e.to_string())?;
    program
        .get_instructions()
        .iter()
        // `BpfInstruction` keeps its fields private; its Display is "code jt jf k".
        .map(|i| parse_insn(&i.to_string()))
        .collect::<Option<Program>>()
        .ok_or_else(|| format!("libpcap produced an unreadable program for {expr:?}"))
}

fn parse_insn(text: &str) -> Option<libc::sock_filter> {
    let mut it = text.split(' ');
    let code = it.next()?.parse().ok()?;
    let jt = it.next()?.parse().ok()?;
    let jf = it.next()?.parse().ok()?;
    let k = it.next()?.parse().ok()?;
    it.next().is_none().then_some(insn(code, jt, jf, k))
}

/// Accepts the packets of `direction` (all for `Both`).
pub fn direction_program(direction: Direction) -> Option<Program> {
    let outgoing = libc::PACKET_OUTGOING as u32;
    let load = insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_AD_PKTTYPE);
    match direction {
        Direction::Both => None,
        // Outgoing: fall through to accept; otherwise skip it to the refusal.
        Direction::Out => Some(vec![
            load,
            insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, outgoing),
            bpf::ret(ACCEPT),
            bpf::ret(0),
        ]),
        Direction::In => Some(vec![
            load,
            insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, outgoing),
            bpf::ret(0),
            bpf::ret(ACCEPT),
        ]),
    }
}

/// The tcpdump expression matching everything except GRE sent to one of `collectors`.
pub fn exclusion_expr(collectors: &[IpAddr]) -> Option<String> {
    let terms: Vec<String> = collectors
        .iter()
        .map(|c| match c {
            IpAddr::V4(a) => format!("(ip proto 47 and ip dst host {a})"),
            IpAddr::V6(a) => format!("(ip6 proto 47 and ip6 dst host {a})"),
        })
        .collect();
    (!terms.is_empty()).then(|| format!("not ({})", terms.join(" or ")))
}

/// Runs `first`, and where it would accept, `second` from its start: the packets both accept.
/// `None` when `first` returns a register (`ret a`, `ret x`: libpcap never emits these) or the
/// result is longer than the kernel takes.
pub fn chain(first: &[libc::sock_filter], second: &[libc::sock_filter]) -> Option<Program> {
    let n = first.len();
    let mut out = Vec::with_capacity(n + second.len());
    for (i, ins) in first.iter().enumerate() {
        if ins.code & CLASS_MASK == BPF_RET {
            if ins.code & RVAL_MASK != BPF_K {
                return None;
            }
            if ins.k != 0 {
                // Jump to the instruction after the last one of `first`.
                out.push(insn(BPF_JMP | BPF_JA, 0, 0, (n - i - 1) as u32));
                continue;
            }
        }
        out.push(*ins);
    }
    out.extend_from_slice(second);
    (out.len() <= MAX_INSTRUCTIONS).then_some(out)
}

/// A flow's whole kernel filter.
pub fn flow_program(
    direction: Direction,
    collectors: &[IpAddr],
    expr: Option<&str>,
) -> Result<Program, String> {
    let mut program = match expr {
        Some(e) => compile(e)?,
        None => vec![bpf::ret(ACCEPT)],
    };
    let too_long =
        || format!("the filter is longer than the kernel's {MAX_INSTRUCTIONS} instructions");
    if let Some(excl) = exclusion_expr(collectors) {
        program = chain(&compile(&excl)?, &program).ok_or_else(too_long)?;
    }
    if let Some(dir) = direction_program(direction) {
        program = chain(&dir, &program).ok_or_else(too_long)?;
    }
    Ok(program)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions libpcap emits for Ethernet filters plus
    /// the `pkt_type` ancillary load: enough to check chained programs against libpcap's own.
    pub fn run(program: &[libc::sock_filter], frame: &[u8], pkt_type: u8) -> u32 {
        let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0usize;
        let load = |off: u32, size: u16| -> Option<u32> {
            if off == SKF_AD_PKTTYPE {
                return Some(u32::from(pkt_type));
            }
            let off = off as usize;
            let n = match size {
                0x00 => 4,
                0x08 => 2,
                _ => 1,
            };
            let b = frame.get(off..off + n)?;
            Some(b.iter().fold(0u32, |acc, v| acc << 8 | u32::from(*v)))
        };
        loop {
            let i = program[pc];
            pc += 1;
            let class = i.code & 0x07;
            match class {
                0x00 | 0x01 => {
                    let mode = i.code & 0xe0;
                    let size = i.code & 0x18;
                    let v = match mode {
                        0x00 => Some(i.k),
                        0x20 => load(i.k, size),
                        0x40 => load(x.wrapping_add(i.k), size),
                        0x60 => Some(mem[i.k as usize]),
                        0x80 => Some(frame.len() as u32),
                        0xa0 => load(i.k, 0x10).map(|b| (b & 0xf) * 4),
                        _ => panic!("mode {mode:#x}"),
                    };
                    let Some(v) = v else { return 0 };
                    if class == 0 { a = v } else { x = v }
                }
                0x02 => mem[i.k as usize] = a,
                0x03 => mem[i.k as usize] = x,
                0x04 => {
                    let operand = if i.code & 0x08 != 0 { x } else { i.k };
                    a = match i.code & 0xf0 {
                        0x00 => a.wrapping_add(operand),
                        0x10 => a.wrapping_sub(operand),
                        0x20 => a.wrapping_mul(operand),
                        0x30 => a.checked_div(operand).unwrap_or(0),
                        0x40 => a | operand,
                        0x50 => a & operand,
                        0x60 => a.wrapping_shl(operand),
                        0x70 => a.wrapping_shr(operand),
                        0x80 => a.wrapping_neg(),
                        op => panic!("alu {op:#x}"),
                    };
                }
                0x05 => {
                    let operand = if i.code & 0x08 != 0 { x } else { i.k };
                    let taken = match i.code & 0xf0 {
                        0x00 => {
                            pc += i.k as usize;
                            continue;
                        }
                        0x10 => a == operand,
                        0x20 => a > operand,
                        0x30 => a >= operand,
                        0x40 => a & operand != 0,
                        op => panic!("jmp {op:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => {
                    return match i.code & 0x18 {
                        0x10 => a,
                        0x08 => x,
                        _ => i.k,
                    };
                }
                0x07 => {
                    if i.code & 0xf8 == 0 {
                        x = a
                    } else {
                        a = x
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1];
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        eth(0x0800, &p)
    }

    fn ipv6(next: u8, dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, l4.len() as u8, next, 64];
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        eth(0x86dd, &p)
    }

    fn tcp(dport: u16) -> Vec<u8> {
        let mut t = vec![0x30, 0x39];
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0; 16]);
        t
    }

    const COLLECTOR4: [u8; 4] = [192, 0, 2, 9];
    const COLLECTOR6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

    fn collectors() -> Vec<IpAddr> {
        vec![IpAddr::from(COLLECTOR4), IpAddr::from(COLLECTOR6)]
    }

    #[test]
    fn compiles_like_tcpdump_and_refuses_bad_syntax() {
        let p = compile("tcp port 443").expect("compiles");
        assert!(p.len() > 5);
        assert!(run(&p, &ipv4(6, [10, 0, 0, 2], &tcp(443)), 0) > 0);
        assert_eq!(run(&p, &ipv4(6, [10, 0, 0, 2], &tcp(80)), 0), 0);
        let e = compile("tcp port").expect_err("syntax");
        assert!(e.contains("syntax error"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn interpreter_agrees_with_libpcap() {
        let frames = [
            ipv4(6, [10, 0, 0, 2], &tcp(443)),
            ipv4(6, [10, 0, 0, 2], &tcp(80)),
            ipv4(17, [10, 0, 0, 2], &tcp(443)),
            ipv4(47, COLLECTOR4, &[0; 8]),
            ipv6(6, COLLECTOR6, &tcp(443)),
            ipv6(47, COLLECTOR6, &[0; 8]),
            eth(0x0806, &[0; 28]),
        ];
        for expr in [
            "tcp port 443",
            "ip6 or arp",
            "not (ip proto 47 and ip dst host 192.0.2.9)",
            "vlan 10 or tcp",
        ] {
            let prog = compile(expr).expect("compiles");
            let pcap = Capture::dead(Linktype::ETHERNET)
                .expect("dead")
                .compile(expr, true)
                .expect("compiles");
            for f in &frames {
                assert_eq!(run(&prog, f, 0) > 0, pcap.filter(f), "{expr} on {f:02x?}");
            }
        }
    }

    #[test]
    fn tunnel_traffic_to_the_collectors_is_excluded() {
        let p = flow_program(Direction::Both, &collectors(), None).expect("compiles");
        assert_eq!(run(&p, &ipv4(47, COLLECTOR4, &[0; 8]), 4), 0);
        assert_eq!(run(&p, &ipv6(47, COLLECTOR6, &[0; 8]), 4), 0);
        // GRE elsewhere, and other traffic to the collector, is mirrored.
        assert_eq!(run(&p, &ipv4(47, [192, 0, 2, 10], &[0; 8]), 4), ACCEPT);
        assert_eq!(run(&p, &ipv4(6, COLLECTOR4, &tcp(22)), 4), ACCEPT);
        assert_eq!(run(&p, &eth(0x0806, &[0; 28]), 0), ACCEPT);
    }

    #[test]
    fn chained_program_is_the_conjunction() {
        let user = "tcp port 443 or (vlan and tcp port 443)";
        let p = flow_program(Direction::Out, &collectors(), Some(user)).expect("compiles");
        let https = ipv4(6, [10, 0, 0, 2], &tcp(443));
        let outgoing = libc::PACKET_OUTGOING;
        assert!(run(&p, &https, outgoing) > 0);
        assert_eq!(run(&p, &https, libc::PACKET_HOST), 0, "direction");
        assert_eq!(
            run(&p, &ipv4(6, [10, 0, 0, 2], &tcp(80)), outgoing),
            0,
            "expression"
        );
        assert_eq!(
            run(&p, &ipv4(47, COLLECTOR4, &[0; 8]), outgoing),
            0,
            "tunnel"
        );

        let p = flow_program(Direction::In, &[], Some("tcp port 443")).expect("compiles");
        assert!(run(&p, &https, libc::PACKET_HOST) > 0);
        assert!(run(&p, &https, libc::PACKET_OTHERHOST) > 0);
        assert_eq!(run(&p, &https, outgoing), 0);
        // The user's accept value survives; snaplen is the ring's job.
        let alone = compile("tcp port 443").expect("compiles");
        assert_eq!(run(&p, &https, 0), run(&alone, &https, 0));
    }

    #[test]
    fn chain_rewrites_only_accepting_returns() {
        let first = [insn(BPF_JMP | BPF_JEQ, 0, 1, 5), bpf::ret(100), bpf::ret(0)];
        let second = [bpf::ret(7)];
        let c = chain(&first, &second).expect("chains");
        assert_eq!(c.len(), 4);
        assert_eq!((c[1].code, c[1].k), (BPF_JMP | BPF_JA, 1));
        assert_eq!((c[2].code, c[2].k), (BPF_RET, 0));
        assert!(chain(&[insn(BPF_RET | 0x10, 0, 0, 0)], &second).is_none());
        let long = vec![bpf::ret(1); MAX_INSTRUCTIONS];
        assert!(chain(&long, &second).is_none());
    }
}
