//! Classic BPF socket filters (`SO_ATTACH_FILTER`).
//!
//! tapwire compiles tcpdump syntax with libpcap elsewhere (`pcap::Capture::dead(..).compile`,
//! the same program `tcpdump -dd` prints); this module only hands the instructions to a socket.
//! A filter's return value is the number of bytes to keep, so it also acts as a snaplen.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use crate::error::context;
use crate::sys::cvt;

/// The kernel's limit on classic BPF program length (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

const BPF_RET: u16 = 0x06;
const BPF_K: u16 = 0x00;
const BPF_CLASS_MASK: u16 = 0x07;
const BPF_RVAL_MASK: u16 = 0x18;

/// `ret #k`: accept `k` bytes of every packet (0 drops it).
pub const fn ret(k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_RET | BPF_K,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Attaches `program` to `socket`, replacing any filter atomically: every packet the socket
/// queues after this call has passed `program`.
pub fn attach_filter(socket: &impl AsFd, program: &[libc::sock_filter]) -> io::Result<()> {
    if program.is_empty() || program.len() > MAX_INSTRUCTIONS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "BPF program has {} instructions; the kernel takes 1 to {MAX_INSTRUCTIONS}",
                program.len()
            ),
        ));
    }
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        // The kernel copies the program and never writes through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `program.len()` valid instructions for the duration of the call;
    // the kernel copies them before returning.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop).map_err(|e| {
        context(
            e,
            format!(
                "setsockopt(SO_ATTACH_FILTER) with {} instructions (rejected by the kernel's checker?)",
                program.len()
            ),
        )
    })
}

/// Sets the program of a `PACKET_FANOUT_CBPF` group (`PACKET_FANOUT_DATA`): its return value,
/// modulo the number of members, picks the socket for each packet.
pub fn set_fanout_program(socket: &impl AsFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        // The kernel copies the program and never writes through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `program.len()` valid instructions for the duration of the call;
    // the kernel copies them before returning.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_FANOUT_DATA,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    cvt(ret)
        .map(drop)
        .map_err(|e| context(e, "setsockopt(PACKET_FANOUT_DATA)"))
}

/// `PACKET_FANOUT_DATA` from `linux/if_packet.h` (not in the libc crate).
const PACKET_FANOUT_DATA: libc::c_int = 22;

/// A fanout program that spreads packets by their outer source address only, so that every
/// packet of one mirror sender — fragments included — reaches the same socket, in order. The
/// kernel's flow hash would look inside GRE and at UDP ports that tunnel endpoints vary per
/// inner flow. The program runs with the packet starting at the network header; the
/// protocol comes from `skb->protocol` (VLAN tags are already taken off).
pub fn outer_source_fanout() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_A: u16 = 0x16; // BPF_RET | BPF_A
    // SKF_AD_OFF + SKF_AD_PROTOCOL: load skb->protocol (network byte order value).
    const AD_PROTOCOL: u32 = 0xffff_f000;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(LD_W_ABS | 0x08, 0, 0, AD_PROTOCOL), // ld proto  (BPF_H size bits ignored for ancillary)
        ins(JEQ_K, 0, 2, 0x0800),                // IPv4?
        ins(LD_W_ABS, 0, 0, 12),                 // ld [12]: source address
        ins(RET_A, 0, 0, 0),
        ins(JEQ_K, 0, 2, 0x86dd), // IPv6?
        ins(LD_W_ABS, 0, 0, 20),  // ld [20]: last word of the source address
        ins(RET_A, 0, 0, 0),
        ret(0),
    ]
}

/// Removes the socket's filter. Detaching when none is attached is not an error.
pub fn detach_filter(socket: &impl AsFd) -> io::Result<()> {
    let unused: libc::c_int = 0;
    match crate::sys::setsockopt(
        socket.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_DETACH_FILTER,
        &unused,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map_err(|e| context(e, "setsockopt(SO_DETACH_FILTER)")),
    }
}

/// `program` with every accepting `ret #k` lowered to at most `snaplen` bytes.
///
/// `None` when the program returns the accumulator or index register (`ret a`, `ret x`), whose
/// value cannot be capped by rewriting; libpcap emits only `ret #k`.
pub fn with_snaplen(program: &[libc::sock_filter], snaplen: u32) -> Option<Vec<libc::sock_filter>> {
    program
        .iter()
        .map(|insn| {
            if insn.code & BPF_CLASS_MASK != BPF_RET {
                return Some(*insn);
            }
            if insn.code & BPF_RVAL_MASK != BPF_K {
                return None;
            }
            Some(libc::sock_filter {
                k: insn.k.min(snaplen),
                ..*insn
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    #[test]
    fn snaplen_caps_accepting_returns_only() {
        let prog = [
            insn(0x28, 12),
            insn(0x15, 0x800),
            ret(262_144),
            ret(0),
            ret(10),
        ];
        let capped = with_snaplen(&prog, 96).expect("only ret #k");
        let ks: Vec<u32> = capped.iter().map(|i| i.k).collect();
        assert_eq!(ks, [12, 0x800, 96, 0, 10]);
    }

    #[test]
    fn snaplen_refuses_ret_a_and_ret_x() {
        assert!(with_snaplen(&[insn(BPF_RET | 0x10, 0)], 96).is_none());
        assert!(with_snaplen(&[insn(BPF_RET | 0x08, 0)], 96).is_none());
    }

    #[test]
    fn program_length_is_checked_before_the_syscall() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let e = attach_filter(&sock, &[]).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let long = vec![ret(0); MAX_INSTRUCTIONS + 1];
        assert!(attach_filter(&sock, &long).is_err());
    }

    #[test]
    fn attach_and_detach_on_a_udp_socket() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        attach_filter(&sock, &[ret(0)]).expect("attach");
        detach_filter(&sock).expect("detach");
        detach_filter(&sock).expect("detach twice is fine");
        // A jump out of the program is rejected by the kernel's checker, with context.
        let bad = [libc::sock_filter {
            code: 0x05,
            jt: 0,
            jf: 0,
            k: 10,
        }];
        let e = attach_filter(&sock, &bad).expect_err("bad jump");
        assert!(e.to_string().contains("SO_ATTACH_FILTER"), "{e}");
        assert_eq!(crate::raw_os_error(&e), Some(libc::EINVAL));
    }
}
