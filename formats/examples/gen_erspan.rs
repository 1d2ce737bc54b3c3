//! Writes a benchmark input: a pcap (LINKTYPE_ETHERNET, microseconds) of ERSPAN Type II over
//! IPv4/Ethernet from several sessions, interleaved round-robin, each session with its own
//! contiguous GRE sequence counter.
//!
//! ```text
//! cargo run --release -p tapwire-formats --example gen_erspan -- \
//!     --packets 2000000 --sessions 8 --inner-bytes 60 --out erspan.pcap
//! ```
//!
//! Session `s` (1..=S) is sent from 10.1.0.(1 + (s - 1) % 4), so several sessions share an outer
//! address (as two sessions of one switch do) and several addresses are in play. The inner
//! frame is Ethernet/IPv4/UDP padded with zeros to `--inner-bytes` (at least 42).

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::ExitCode;

use tapwire_formats::capture::{Encoder, Format, InterfaceInfo, LinkType, PacketInfo, SNAPLEN};
use tapwire_formats::wire::erspan::{self, Cos, Encap, Index, PacketII, ReprII, SessionId, VlanId};
use tapwire_formats::wire::ethernet::{self, EtherType, Frame};
use tapwire_formats::wire::ip::Protocol;
use tapwire_formats::wire::{gre, ipv4, udp};

/// Bytes handed to `write` at once.
const FLUSH_BYTES: usize = 8 << 20;
const FIRST_TS_NS: u64 = 1_700_000_000_000_000_000;
const OUTER_HEADERS: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + 8 + 8;
const INNER_HEADERS: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;

struct Args {
    packets: u64,
    sessions: u16,
    inner_bytes: usize,
    out: String,
}

fn usage() -> String {
    "usage: gen_erspan --packets N --sessions S --inner-bytes B --out FILE".into()
}

fn parse_args() -> Result<Args, String> {
    let mut packets = None;
    let mut sessions = None;
    let mut inner_bytes = None;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--packets" => packets = Some(value.parse().map_err(|e| bad(&e))?),
            "--sessions" => sessions = Some(value.parse().map_err(|e| bad(&e))?),
            "--inner-bytes" => inner_bytes = Some(value.parse().map_err(|e| bad(&e))?),
            "--out" => out = Some(value),
            _ => return Err(format!("unknown argument {flag}\n{}", usage())),
        }
    }
    let (Some(packets), Some(sessions), Some(inner_bytes), Some(out)) =
        (packets, sessions, inner_bytes, out)
    else {
        return Err(usage());
    };
    if !(1..=SessionId::MAX).contains(&sessions) {
        return Err(format!("--sessions must be 1..={}", SessionId::MAX));
    }
    if inner_bytes < INNER_HEADERS || inner_bytes + OUTER_HEADERS > usize::from(u16::MAX) {
        return Err(format!(
            "--inner-bytes must be {INNER_HEADERS}..={}",
            usize::from(u16::MAX) - OUTER_HEADERS
        ));
    }
    Ok(Args {
        packets,
        sessions,
        inner_bytes,
        out,
    })
}

/// The mirrored frame: Ethernet/IPv4/UDP, zero-padded to `len` bytes.
fn inner_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    ethernet::Repr {
        dst_addr: [0x02, 0, 0, 0, 0, 0x02],
        src_addr: [0x02, 0, 0, 0, 0, 0x01],
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut Frame::new_unchecked(&mut f[..]));
    let ip_len = len - ethernet::HEADER_LEN;
    ipv4::Repr {
        src_addr: Ipv4Addr::new(192, 168, 1, 1),
        dst_addr: Ipv4Addr::new(192, 168, 1, 2),
        protocol: Protocol::Udp,
        payload_len: ip_len - ipv4::MIN_HEADER_LEN,
        ttl: 64,
        ident: 0,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(
        &mut f[ethernet::HEADER_LEN..],
    ));
    udp::Repr {
        src_port: 40_000,
        dst_port: 9,
        payload_len: ip_len - ipv4::MIN_HEADER_LEN - udp::HEADER_LEN,
    }
    .emit(&mut udp::Packet::new_unchecked(
        &mut f[ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN..],
    ));
    f
}

/// Writes one outer packet around `inner` into `buf` (exactly `OUTER_HEADERS + inner.len()`).
fn emit_packet(buf: &mut [u8], src: Ipv4Addr, session: SessionId, seq: u32, inner: &[u8]) {
    ethernet::Repr {
        dst_addr: [0x02, 0, 0, 0, 0, 0xfe],
        src_addr: [0x02, 0, 0, 0, 0, 0xfd],
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut Frame::new_unchecked(&mut buf[..]));
    let gre = gre::Repr {
        protocol: gre::Protocol::Erspan,
        checksum: false,
        key: None,
        sequence: Some(seq),
    };
    let ers = ReprII {
        vlan: VlanId::from_bits(100),
        cos: Cos::from_bits(0),
        encap: Encap::Untagged,
        truncated: false,
        session_id: session,
        index: Index::from_bits(1),
    };
    let ip = &mut buf[ethernet::HEADER_LEN..];
    ipv4::Repr {
        src_addr: src,
        dst_addr: Ipv4Addr::new(10, 1, 255, 254),
        protocol: Protocol::Gre,
        payload_len: gre.buffer_len() + ers.buffer_len() + inner.len(),
        ttl: 64,
        ident: seq as u16,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut *ip));
    let g = &mut ip[ipv4::MIN_HEADER_LEN..];
    gre.emit(&mut gre::Packet::new_unchecked(&mut *g));
    let e = &mut g[gre.buffer_len()..];
    ers.emit(&mut PacketII::new_unchecked(&mut *e));
    e[erspan::TYPE_II_HEADER_LEN..].copy_from_slice(inner);
}

fn run(args: &Args) -> io::Result<()> {
    let mut file = File::create(&args.out)?;
    let mut enc = Encoder::new(Format::Pcap { nanos: false });
    let iface = enc
        .add_interface(&InterfaceInfo {
            link: LinkType::Ethernet,
            name: "gen_erspan".into(),
            description: "synthetic ERSPAN Type II".into(),
            snaplen: SNAPLEN,
        })
        .map_err(io::Error::other)?;
    enc.buffer()
        .reserve(FLUSH_BYTES + 2 * usize::from(u16::MAX));
    let inner = inner_frame(args.inner_bytes);
    let sessions: Vec<(Ipv4Addr, SessionId, u32)> = (1..=args.sessions)
        .map(|s| {
            let src = Ipv4Addr::new(10, 1, 0, 1 + ((s - 1) % 4) as u8);
            // Distinct, arbitrary starting points for each session's counter.
            (src, SessionId::from_bits(s), u32::from(s) * 1_000_000)
        })
        .collect();
    let mut packet = vec![0u8; OUTER_HEADERS + inner.len()];
    for n in 0..args.packets {
        let s = (n % u64::from(args.sessions)) as usize;
        let (src, session, first_seq) = sessions[s];
        let seq = first_seq.wrapping_add((n / u64::from(args.sessions)) as u32);
        emit_packet(&mut packet, src, session, seq, &inner);
        let info = PacketInfo {
            ts_ns: FIRST_TS_NS + n * 1000,
            orig_len: packet.len() as u32,
            data: &packet,
            direction: None,
            comment: None,
        };
        enc.packet(iface, &info).map_err(io::Error::other)?;
        if enc.pending_len() >= FLUSH_BYTES {
            let buf = enc.buffer();
            file.write_all(buf)?;
            buf.clear();
        }
    }
    file.write_all(enc.buffer())?;
    file.flush()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gen_erspan: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_erspan: {}: {e}", args.out);
            ExitCode::FAILURE
        }
    }
}
